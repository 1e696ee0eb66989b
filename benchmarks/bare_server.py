"""The floor of any aiohttp server: ``POST /v2/{endpoint}/runsync`` echoes ``input`` as a finished job.

It parses and writes JSON with orjson and does nothing else (no queue, no journal, no worker), so its request
rate is the ceiling an aiohttp-based endpoint can reach on this machine. Run it as
``python -m benchmarks.bare_server --port P``; it prints ``ready`` once listening. It runs on the loop
``HANDLER_SDK_LOOP`` picks, as serve does, so each yardstick shares our loop.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

import orjson
from aiohttp import web

from handler_sdk import loop as event_loop

_ids = itertools.count()


async def runsync(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    reply = {"id": f"sync-{next(_ids)}", "status": "COMPLETED", "output": body["input"]}
    return web.Response(body=orjson.dumps(reply), content_type="application/json")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v2/{endpoint_id}/runsync", runsync)
    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bare_server", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    args = p.parse_args(argv)
    factory = event_loop.loop_factory() or asyncio.new_event_loop
    web.run_app(
        make_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=lambda *_: print("ready", flush=True),
        loop=factory(),
    )


if __name__ == "__main__":
    main()
