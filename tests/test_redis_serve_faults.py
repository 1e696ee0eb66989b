"""The Redis store through real serve endpoints on a real redis-server: its dead dependency, its shared webhook
outbox and its shared rate-limit window (Redis killed and restarted, two replicas delivering webhooks, a delivery
left by a dead replica, one window for two replicas)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer

from handler_sdk.models import JobStatus as S
from handler_sdk.serve.state.broker import BrokerConfig
from handler_sdk.serve.state.redis_client import connect
from handler_sdk.serve.state.redis_jobs import RedisJobs
from tests.conftest import ROOT, free_port, until

pytestmark = pytest.mark.timeout(120)


async def test_while_redis_is_down_requests_are_answered_503_and_serve_recovers(
    endpoint_factory: Any, redis_aof_server: RedisServer
) -> None:
    ep = await endpoint_factory("echo_async.py", store=redis_aof_server.url)
    assert (await ep.post("runsync", {"input": {"n": 0}}))[1]["status"] == "COMPLETED"
    redis_aof_server.kill9()
    reads = ("status/x", "health", "requests", "dashboard/state")
    for op, body in (("run", {"input": {}}), ("runsync", {"input": {}}), *((r, None) for r in reads)):
        code, reply = await ep.call("GET" if body is None else "POST", op, body)
        assert code == 503 and "Redis unavailable" in reply["error"], (op, code, reply)
    redis_aof_server.start()
    code, reply = await ep.post("runsync", {"input": {"n": 1}})
    assert (code, reply["status"], reply["output"]) == (200, "COMPLETED", {"n": 1})


async def test_every_run_job_accepted_a_second_before_a_redis_kill_completes_after_its_restart(
    endpoint_factory: Any, redis_aof_server: RedisServer, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    ep = await endpoint_factory("ep_gate.py", store=redis_aof_server.url)
    ids = [(await ep.post("run", {"input": {"wait_for": str(gate), "tag": i}}))[1]["id"] for i in range(20)]
    await asyncio.sleep(1.5)  # past appendfsync everysec
    redis_aof_server.kill9()
    await asyncio.sleep(0.5)
    redis_aof_server.start()
    gate.touch()

    async def all_completed() -> bool:
        replies = [await ep.get(f"status/{i}") for i in ids]
        return all(code == 200 and r["status"] == "COMPLETED" for code, r in replies)

    await until(all_completed, 60)
    assert [(await ep.get(f"status/{i}"))[1]["output"]["tag"] for i in ids] == list(range(20))


async def test_two_replicas_send_each_completed_webhook_once_with_one_webhook_id(
    endpoint_factory: Any,
    receiver_factory: Any,
    redis_url: str,
) -> None:
    rec = await receiver_factory()
    a = await endpoint_factory(None, store=redis_url, replica_id="a", webhook_backoff_s=0.05)
    b = await endpoint_factory("echo_async.py", store=redis_url, replica_id="b", webhook_backoff_s=0.05)
    ids = [(await a.post("run", {"input": {"i": i}, "webhook": rec.url}))[1]["id"] for i in range(10)]
    await until(lambda: _async(len(rec.calls) >= 10), 30)
    await asyncio.sleep(0.5)  # nothing more comes
    assert sorted(c[1]["id"] for c in rec.calls) == sorted(ids)
    assert len({h["webhook-id"] for _, h in rec.raw}) == 10
    assert (await b.get("health"))[1]["jobs"]["completed"] == 10


async def test_a_delivery_claimed_by_a_replica_that_died_is_sent_by_another(
    endpoint_factory: Any,
    receiver_factory: Any,
    redis_url: str,
) -> None:
    rec = await receiver_factory()
    jobs = RedisJobs(connect(redis_url), "local")
    await jobs.open()
    try:
        await jobs.submit("j1", b"{}", meta=b'{"webhook":"%s"}' % rec.url.encode(), hook=True)
        [t] = await jobs.take("w", 1)
        await jobs.done("w", t.id, S.COMPLETED, output=b'"ok"')
        # A replica claims the delivery and dies before sending it: its claim is a lease of 0.5 s.
        assert [r.id for r in await jobs.claim_hooks(500)] == ["j1"]
        ep = await endpoint_factory(None, store=redis_url, replica_id="survivor")
        await until(lambda: _async(len(rec.calls) == 1), 20)
        assert rec.calls[0][1]["id"] == "j1" and rec.calls[0][1]["output"] == "ok"
        assert await jobs.claim_hooks(500) == []  # acknowledged: out of the outbox
        assert (await ep.get("status/j1"))[1]["status"] == "COMPLETED"
    finally:
        await jobs.close()
        await jobs.client.aclose()


async def _async(value: bool) -> bool:
    return value


async def test_the_rate_limits_are_one_window_for_all_replicas(endpoint_factory: Any, redis_url: str) -> None:
    a = await endpoint_factory(None, store=redis_url, replica_id="a", rate_limits=True)
    b = await endpoint_factory(None, store=redis_url, replica_id="b", rate_limits=True)
    codes = [(await ep.get("requests"))[0] for ep in (a, b) * 6]  # SEED.md: 10 /requests per 10 s
    assert codes == [200] * 10 + [429, 429]
    code, reply = await b.get("requests")
    assert code == 429 and "10 requests per 10 s on /requests" in reply["error"]


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "handler_sdk.serve", *args, "--port", str(free_port())],
        check=False, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}, cwd=ROOT,
    )  # fmt: skip


def test_an_unknown_store_is_refused_at_start_with_the_choices() -> None:
    p = _serve("--store", "postgres://db/1")
    assert p.returncode == 2
    assert "--store must be sqlite or redis://HOST:PORT/DB, not 'postgres://db/1'" in p.stderr


def test_a_redis_store_that_cannot_be_reached_stops_serve_at_start_with_its_url() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    p = _serve(env={"HANDLER_SDK_STORE": url})
    assert p.returncode == 2
    assert f"cannot reach the Redis store at {url}" in p.stderr


async def test_the_in_process_worker_keeps_its_lease_through_a_job_longer_than_lease_ms(
    endpoint_factory: Any, redis_url: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    ep = await endpoint_factory("ep_gate.py", store=redis_url, broker=BrokerConfig(lease_ms=600, tick_s=0.02))
    _, job = await ep.post("run", {"input": {"wait_for": str(gate), "tag": "long"}})
    await ep.wait_status(job["id"], "IN_PROGRESS")
    await asyncio.sleep(2.0)  # more than three leases
    gate.touch()
    done = await ep.wait_status(job["id"], "COMPLETED")
    assert done["output"] == {"tag": "long"} and "retries" not in done
    assert (await ep.get("health"))[1]["jobs"]["retried"] == 0
