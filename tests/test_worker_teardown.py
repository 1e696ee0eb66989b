"""A worker torn down while a result is still on its way keeps that result in its spool (no task per job shields
it: the spool outlives the process, a shielded report would not).

The platform here is a small aiohttp app on loopback that hands out one job and then never answers job-done:
a platform that hangs, which is outside our control and so may be faked.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from handler_sdk import handler
from handler_sdk.worker.config import endpoints_from_env
from handler_sdk.worker.http import HttpTransport
from handler_sdk.worker.loop import Worker, WorkerConfig
from handler_sdk.worker.spool import Spool


@handler
async def double(job):  # type: ignore[no-untyped-def]
    return {"twice": job.input["n"] * 2}


async def test_a_result_undelivered_when_the_worker_is_torn_down_is_kept_in_the_spool(tmp_path: Path) -> None:
    done_seen = asyncio.Event()
    given = False

    async def take(request: web.Request) -> web.Response:
        nonlocal given
        if given:
            await asyncio.sleep(30)
            return web.Response(status=204)
        given = True
        return web.json_response({"id": "job-1", "input": {"n": 21}})

    async def done(request: web.Request) -> web.Response:
        done_seen.set()
        await asyncio.sleep(30)  # hangs: the result is never acknowledged
        return web.json_response({})

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v2/x/job-take/{w}", take)
    app.router.add_post("/v2/x/job-done/{w}/{j}", done)
    app.router.add_get("/v2/x/ping/{w}", ping)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    spool_dir = tmp_path / "spool"
    try:
        ep = endpoints_from_env(
            {"HANDLER_SDK_ENDPOINT_URL": f"http://127.0.0.1:{port}/v2/x", "HANDLER_SDK_WORKER_ID": "w"}
        )
        transport = HttpTransport(ep, request_timeout_s=60)
        worker = Worker(double, transport, WorkerConfig(spool_dir=spool_dir, ping_interval_s=60))
        run = asyncio.create_task(worker.run())
        async with asyncio.timeout(10):
            await done_seen.wait()
        assert Spool(spool_dir).pending() == [], "nothing is spooled while the report is merely in flight"
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await transport.close()
        [(job_id, outcome, _)] = Spool(spool_dir).pending()
        assert job_id == "job-1"
        assert outcome.output == b'{"twice":42}'
    finally:
        await runner.cleanup()
