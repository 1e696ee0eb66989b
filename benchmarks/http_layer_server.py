"""Benchmark 1's (e): serve's own HTTP layer and nothing behind it.

``POST /v2/local/runsync`` goes through what every /runsync of serve goes through before and after the job:
the route's guard (``Routes``: API key check, errors as JSON), the body read with its cap and timeout
(``read_json``), the request's validation (``run_request``, the RunRequest model) and a JSON reply built by
``json_reply``, with the same aiohttp runner settings (header deadline, keep-alive) as serve. It then answers the
input as a finished job at once: no broker, no journal, no worker. Its rate is the ceiling of any job path behind
serve's HTTP layer, so (a) / (e) is what the job's own trip costs, and (e) / (b) what the HTTP layer costs over a
bare echo. Run as ``python -m benchmarks.http_layer_server --port P``; it prints ``ready`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

from aiohttp import web

from handler_sdk import loop as event_loop
from handler_sdk.serve.http.client import ClientLimits, run_request
from handler_sdk.serve.http.replies import json_reply
from handler_sdk.serve.http.router import Routes
from handler_sdk.serve.http.web import BODY_TIMEOUT, read_json
from handler_sdk.serve.server import ServeConfig, _Runner

_ids = itertools.count()
_LIMITS = ClientLimits()


async def runsync(request: web.Request) -> web.Response:
    req = run_request(await read_json(request, _LIMITS.runsync_body))
    return json_reply({"id": f"sync-{next(_ids)}", "status": "COMPLETED", "output": req.input})


def make_app() -> web.Application:
    app = web.Application(client_max_size=22 << 20)
    app[BODY_TIMEOUT] = ServeConfig().body_timeout_s
    routes = Routes(app, "local")
    routes.post("/runsync", runsync)
    routes.finish()
    return app


async def _serve(host: str, port: int) -> None:
    cfg = ServeConfig()
    runner = _Runner(
        make_app(), cfg.header_timeout_s, access_log=None, handle_signals=False, keepalive_timeout=cfg.idle_timeout_s
    )
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.http_layer_server", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    args = p.parse_args(argv)
    event_loop.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
