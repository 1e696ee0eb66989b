"""handler_sdk.client against a real endpoint on loopback: every operation, its typed replies, final statuses,
wait's timeout semantics, the stream iterator, 429s and dropped connections retried with one Idempotency-Key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from handler_sdk.client import AsyncEndpoint, Endpoint, RetryPolicy
from handler_sdk.errors import Conflict, HTTPError, NotFound, TransportError
from handler_sdk.models import HealthReply, JobReply, JobStatus, PurgeReply, RunReply, StreamItem
from handler_sdk.serve.state import limits
from tests.conftest import free_port

FAST = RetryPolicy(attempts=6, backoff_s=0.05, backoff_max_s=0.2)


async def test_run_then_wait_returns_the_finished_job_as_a_typed_reply(endpoint_factory):
    ep = await endpoint_factory("kinds.py:async_echo")
    c = ep.client
    queued = await c.run({"x": 1})
    assert isinstance(queued, RunReply) and queued.status is JobStatus.IN_QUEUE
    done = await c.wait(queued.id, timeout=10)
    assert isinstance(done, JobReply)
    assert done.status is JobStatus.COMPLETED and done.output == {"kind": "async", "input": {"x": 1}}
    assert (await c.status(queued.id)).status is JobStatus.COMPLETED


async def test_runsync_returns_the_result_and_a_failure_carries_its_error_details(endpoint_factory):
    ep = await endpoint_factory("raises.py")
    reply = await ep.client.runsync({})
    assert reply.status is JobStatus.FAILED and reply.error and reply.errorDetails is not None
    assert reply.errorDetails.error_type and reply.errorDetails.worker_id == "local"


async def test_wait_with_timeout_0_checks_once_and_returns_the_running_job(endpoint_factory):
    ep = await endpoint_factory("kinds.py:sync_sleep")
    c = ep.client
    job = await c.run({"seconds": 30})
    await ep.wait_status(job.id, "IN_PROGRESS")
    now = await c.wait(job.id, timeout=0)
    assert now.status is JobStatus.IN_PROGRESS
    short = await c.wait(job.id, timeout=0.3)  # under the server's 1 s minimum hold: slept here, checked once
    assert short.status is JobStatus.IN_PROGRESS
    await c.cancel(job.id)


async def test_wait_ends_on_cancelled_and_timed_out_as_final_statuses(endpoint_factory):
    ep = await endpoint_factory("kinds.py:sync_sleep")
    c = ep.client
    job = await c.run({"seconds": 30})
    await ep.wait_status(job.id, "IN_PROGRESS")
    waiter = asyncio.create_task(c.wait(job.id))  # no timeout: returns only because CANCELLED is final
    assert (await c.cancel(job.id)).status is JobStatus.CANCELLED
    assert (await asyncio.wait_for(waiter, 10)).status is JobStatus.CANCELLED
    timed = await c.run({"seconds": 30}, policy={"executionTimeout": 200})
    assert (await asyncio.wait_for(c.wait(timed.id), 10)).status is JobStatus.TIMED_OUT


async def test_stream_yields_every_item_in_order_and_ends_with_the_job(endpoint_factory):
    ep = await endpoint_factory("kinds.py:sync_gen")
    job = await ep.client.run({"n": 5})
    items = [item async for item in ep.client.stream(job.id)]
    assert all(isinstance(i, StreamItem) for i in items)
    assert [i.output for i in items] == [{"i": n} for n in range(5)]
    assert [i.metrics["stream_index"] for i in items] == list(range(5))
    # Its own position, not the endpoint's cursor: a second reader sees all of it too.
    again = [item.output async for item in ep.client.stream(job.id)]
    assert again == [{"i": n} for n in range(5)]


async def test_retry_purge_and_health_return_their_models_and_errors_raise_their_classes(endpoint_factory):
    ep = await endpoint_factory("raises.py")
    c = ep.client
    failed = await c.runsync({})
    again = await c.retry(failed.id)
    assert again.id == failed.id and again.status is JobStatus.IN_QUEUE
    assert (await c.wait(failed.id, timeout=10)).status is JobStatus.FAILED
    assert isinstance(await c.health(), HealthReply)
    assert await c.purge_queue() == PurgeReply(removed=0, status="completed")
    with pytest.raises(NotFound, match="no-such-job"):
        await c.status("no-such-job")
    echo = (await endpoint_factory("kinds.py:async_echo")).client
    ok = await echo.runsync({})
    with pytest.raises(Conflict, match="only FAILED or TIMED_OUT"):
        await echo.retry(ok.id)


async def test_a_429_is_retried_after_its_retry_after(endpoint_factory, monkeypatch):
    monkeypatch.setitem(limits.DEFAULT_LIMITS, "purge-queue", limits.Limit(1, window_s=1.0))
    ep = await endpoint_factory("kinds.py:async_echo", rate_limits=True)
    assert (await ep.post("purge-queue"))[0] == 200
    code, _ = await ep.post("purge-queue")
    assert code == 429  # the window is spent: a raw call is refused ...
    assert (await ep.client.purge_queue()).status == "completed"  # ... and the client waits it out


async def test_an_error_status_without_a_named_class_still_raises_an_http_error(endpoint_factory):
    ep = await endpoint_factory("kinds.py:async_echo")
    with pytest.raises(HTTPError) as e:
        await ep.client._call(HealthReply, "DELETE", "health")
    assert e.value.status == 405


async def test_connection_errors_are_retried_and_run_keeps_one_idempotency_key(tmp_path: Path):
    """A server that drops the first two connections mid-request, then answers: one job, one key."""
    keys: list[str | None] = []

    async def run(request: web.Request) -> web.StreamResponse:
        keys.append(request.headers.get("Idempotency-Key"))
        if len(keys) <= 2:
            assert request.transport is not None
            request.transport.close()  # the client sees ServerDisconnected
            return web.Response()
        return web.json_response({"id": "job-1", "status": "IN_QUEUE"})

    app = web.Application()
    app.router.add_post("/v2/local/run", run)
    app.router.add_post("/v2/local/runsync", run)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with AsyncEndpoint(f"http://127.0.0.1:{port}/v2", "local", retry=FAST) as c:
            assert (await c.run({"x": 1})).id == "job-1"
            assert len(keys) == 3 and keys[0] and len(set(keys)) == 1
            keys.clear()
            await c.runsync({"x": 1})
            assert len(keys) == 3 and keys[0] and len(set(keys)) == 1
            keys.clear()
            await c.run({"x": 1}, idempotency_key="mine")
            assert set(keys) == {"mine"}
    finally:
        await runner.cleanup()


async def test_an_endpoint_that_comes_up_late_is_reached_and_one_that_never_does_raises_transport_error(
    endpoint_factory,
):
    port = free_port()
    c = AsyncEndpoint(f"http://127.0.0.1:{port}/v2", "local", retry=RetryPolicy(attempts=30, backoff_s=0.05))
    async with c:
        call = asyncio.create_task(c.health())
        await asyncio.sleep(0.3)  # refused connections meanwhile
        await endpoint_factory("kinds.py:async_echo", port=port)
        assert isinstance(await asyncio.wait_for(call, 20), HealthReply)
    dead = AsyncEndpoint(f"http://127.0.0.1:{free_port()}/v2", "local", retry=RetryPolicy(attempts=2, backoff_s=0.01))
    async with dead:
        with pytest.raises(TransportError, match="no reply after 2 attempts"):
            await dead.health()


async def test_the_sync_endpoint_runs_waits_and_streams_from_plain_code(endpoint_factory):
    ep = await endpoint_factory("kinds.py:sync_gen")
    base = f"http://127.0.0.1:{ep.server.port}/v2"

    def script() -> tuple[JobStatus, list[object], int]:
        with Endpoint(base, "local") as c:
            job = c.run({"n": 3})
            items = [i.output for i in c.stream(job.id)]
            done = c.wait(job.id, timeout=10)
            return done.status, items, c.health().jobs.completed

    status, items, completed = await asyncio.to_thread(script)
    assert status is JobStatus.COMPLETED and items == [{"i": 0}, {"i": 1}, {"i": 2}] and completed == 1


async def test_the_client_sends_the_api_key(endpoint_factory):
    ep = await endpoint_factory("kinds.py:async_echo", api_key="sekret")
    assert (await ep.client.runsync({"a": 1})).status is JobStatus.COMPLETED
    async with aiohttp.ClientSession() as s:
        anonymous = AsyncEndpoint(f"http://127.0.0.1:{ep.server.port}/v2", "local", session=s)
        with pytest.raises(HTTPError) as e:
            await anonymous.health()
    assert e.value.status == 401


async def test_the_client_example_runs_against_the_streaming_example(endpoint_factory):
    import importlib.util

    from handler_sdk.loader import load_handler
    from tests.conftest import ROOT

    ep = await endpoint_factory(load_handler(str(ROOT / "examples" / "streaming.py")))
    spec = importlib.util.spec_from_file_location("client_example", ROOT / "examples" / "client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = await asyncio.to_thread(module.main, f"http://127.0.0.1:{ep.server.port}/v2")
    assert out == {"status": "COMPLETED", "output": {"total": 3}, "words": ["w0", "w1", "w2"], "runsync": {"total": 1}}


def test_the_client_imports_neither_the_endpoint_nor_the_worker():
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import sys, handler_sdk.client; "
        "heavy = [m for m in sys.modules if m.startswith(('handler_sdk.serve', 'handler_sdk.worker'))]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


async def test_a_repeated_idempotency_key_returns_the_same_job_and_another_body_under_it_is_a_422(endpoint_factory):
    ep = await endpoint_factory("kinds.py:async_echo")
    c = ep.client
    first = await c.run({"x": 1}, idempotency_key="k-1")
    assert (await c.run({"x": 1}, idempotency_key="k-1")).id == first.id
    with pytest.raises(HTTPError) as e:
        await c.run({"x": 2}, idempotency_key="k-1")
    assert e.value.status == 422
    once = await c.runsync({"x": 3}, idempotency_key="k-2")
    assert (await c.runsync({"x": 3}, idempotency_key="k-2")).id == once.id
    assert (await c.health()).jobs.completed == 2
    with pytest.raises(HTTPError, match="webhookEvents"):
        await c.run({}, webhook_events=["start"])  # no webhook to send them to: the endpoint says so
