"""Limits on a real endpoint: payload caps (413, with and without Content-Length), rate limits (429 with
Retry-After, and off), and the result cap."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from handler_sdk.worker.loop import WorkerConfig

# The same tests on both job stores: the embedded default and a real redis-server.
pytestmark = pytest.mark.stores("sqlite", "redis")

MiB = 1 << 20


def body_of(size: int) -> bytes:
    """A valid /run body of exactly ``size`` bytes."""
    head, tail = b'{"input": {"s": "', b'"}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def sized(size: int) -> io.BytesIO:
    """A body with a Content-Length (aiohttp warns about large raw bytes)."""
    return io.BytesIO(body_of(size))


async def chunked(data: bytes, piece: int = 256 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


async def post_raw(ep: Any, op: str, data: Any) -> tuple[int, Any]:
    try:
        async with ep.http.post(f"{ep.url}/{op}", data=data, headers=ep.headers) as r:
            assert r.content_type == "application/json"
            return r.status, await r.json()
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as e:
        # The server may answer and close while the client still uploads; that is not a reply we can read.
        raise AssertionError(f"connection dropped instead of a 413 reply: {e!r}") from e


# --- payload caps --------------------------------------------------------------------------------------------


async def test_run_bodies_over_10_mib_are_a_413(endpoint_factory):
    ep = await endpoint_factory("echo_async.py")
    code, body = await post_raw(ep, "run", sized(10 * MiB + 1))
    assert code == 413
    assert "limit" in body["error"]
    code, body = await post_raw(ep, "run", chunked(body_of(10 * MiB + 1)))
    assert code == 413
    _, health = await ep.get("health")
    assert health["jobs"]["inQueue"] + health["jobs"]["completed"] == 0


async def test_run_accepts_a_body_of_exactly_10_mib(endpoint_factory):
    ep = await endpoint_factory("echo_async.py")
    code, body = await post_raw(ep, "run", sized(10 * MiB))
    assert code == 200
    done = await ep.wait_status(body["id"], "COMPLETED")
    assert len(done["output"]["s"]) == 10 * MiB - len(b'{"input": {"s": ""}}')


async def test_runsync_takes_bodies_up_to_20_mib_and_413s_above(endpoint_factory):
    ep = await endpoint_factory("echo_async.py")
    code, body = await post_raw(ep, "runsync", sized(15 * MiB))
    assert code == 200 and body["status"] == "COMPLETED"
    code, body = await post_raw(ep, "runsync", sized(20 * MiB + 1))
    assert code == 413 and "limit" in body["error"]
    code, body = await post_raw(ep, "runsync", chunked(body_of(20 * MiB + 1)))
    assert code == 413


# --- rate limits ---------------------------------------------------------------------------------------------


def retry_after(r: aiohttp.ClientResponse) -> int:
    value = int(r.headers["Retry-After"])
    assert 1 <= value <= 10
    return value


async def test_purge_queue_is_limited_to_2_per_10_seconds_with_retry_after(endpoint_factory):
    ep = await endpoint_factory("echo_async.py", rate_limits=True)
    for _ in range(2):
        assert (await ep.post("purge-queue"))[0] == 200
    async with ep.http.post(f"{ep.url}/purge-queue") as r:
        assert r.status == 429
        retry_after(r)
        assert "2 requests per 10 s" in (await r.json())["error"]
    # Other routes have budgets of their own.
    assert (await ep.get("health"))[0] == 200
    assert (await ep.post("runsync", {"input": {}}))[0] == 200


async def test_requests_that_reach_no_route_spend_no_budget(endpoint_factory):
    ep = await endpoint_factory("echo_async.py", rate_limits=True)
    base = ep.url.rsplit("/", 1)[0]
    for url in [f"{base}/other/purge-queue", f"{ep.url}/purge-queue/extra"] * 2:
        async with ep.http.post(url) as r:
            assert r.status == 404
    async with ep.http.get(f"{ep.url}/purge-queue") as r:  # a route, but not for GET
        assert r.status == 405
    for _ in range(2):
        assert (await ep.post("purge-queue"))[0] == 200


async def test_requests_is_limited_to_10_per_10_seconds(endpoint_factory):
    ep = await endpoint_factory("echo_async.py", rate_limits=True)
    for _ in range(10):
        assert (await ep.get("requests"))[0] == 200
    async with ep.http.get(f"{ep.url}/requests") as r:
        assert r.status == 429
        retry_after(r)


async def test_status_routes_share_a_limit_of_400_concurrent_requests(endpoint_factory, tmp_path):
    ep = await endpoint_factory("ep_gate.py", rate_limits=True)
    gate = tmp_path / "gate"
    _, body = await ep.post("run", {"input": {"wait_for": str(gate)}})
    job_id = body["id"]
    await ep.wait_status(job_id, "IN_PROGRESS")
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as many:

        async def hold() -> int:
            async with many.get(f"{ep.url}/status-sync/{job_id}?wait=60000") as r:
                await r.read()
                return r.status

        holders = [asyncio.create_task(hold()) for _ in range(400)]
        try:
            # Once all 400 are in flight, one more request of the group is refused. The probe is a plain /status,
            # which is never in flight when a holder arrives (it answers without waiting), so no holder is refused.
            refused = None
            for _ in range(1000):
                async with ep.http.get(f"{ep.url}/status/{job_id}") as r:
                    if r.status == 429:
                        refused = r
                        retry_after(r)
                        break
                    assert r.status == 200
                await asyncio.sleep(0.02)
            assert refused is not None, "the 401st concurrent status request was admitted"
            code, body = await ep.get(f"stream/{job_id}")
            assert code == 429 and "400 concurrent" in body["error"]
            assert (await ep.get("health"))[0] == 200  # health is not in the status group
        finally:
            gate.touch()
            codes = await asyncio.gather(*holders)
    assert set(codes) == {200}
    # With the holders answered, the group has room again.
    assert (await ep.get(f"status/{job_id}"))[0] == 200


async def test_with_rate_limits_off_nothing_is_refused(endpoint_factory):
    ep = await endpoint_factory("echo_async.py", rate_limits=False)
    for _ in range(5):
        assert (await ep.post("purge-queue"))[0] == 200
    for _ in range(15):
        assert (await ep.get("requests"))[0] == 200


# --- the result cap ------------------------------------------------------------------------------------------


async def test_an_output_over_the_default_20_mb_result_cap_fails_the_job_clearly(endpoint_factory):
    ep = await endpoint_factory("ep_errors.py:sized")
    code, body = await ep.post("runsync", {"input": {"size": 20 * MiB + 1}})
    assert code == 200
    assert body["status"] == "FAILED"
    assert "result cap" in body["error"]
    assert body["errorDetails"]["error_type"] == "OutputTooLarge"
    _, ok = await ep.post("runsync", {"input": {"size": 1000}})
    assert ok["status"] == "COMPLETED" and ok["output"] == "x" * 1000


async def test_the_result_cap_is_configurable(endpoint_factory):
    ep = await endpoint_factory("ep_errors.py:sized", result_cap=4096, worker=WorkerConfig(result_cap=4096))
    _, body = await ep.post("runsync", {"input": {"size": 5000}})
    assert body["status"] == "FAILED" and "4096-byte result cap" in body["error"]
    _, ok = await ep.post("runsync", {"input": {"size": 4000}})
    assert ok["status"] == "COMPLETED"


async def test_serve_result_cap_applies_to_the_in_process_worker(endpoint_factory):
    ep = await endpoint_factory("ep_errors.py:sized", result_cap=4096)
    _, body = await ep.post("runsync", {"input": {"size": 5000}})
    assert body["status"] == "FAILED" and "result cap" in body["error"]
