"""A redis-server killed with SIGKILL under AOF (appendfsync everysec) keeps every job accepted a second before."""

from __future__ import annotations

import asyncio

import pytest
from redis_engine import new_endpoint, replicas
from redis_server import RedisServer

from handler_sdk.errors import StoreError
from handler_sdk.models import JobStatus as S


async def test_every_job_accepted_a_second_before_a_redis_kill_survives_and_completes(
    redis_aof_server: RedisServer,
) -> None:
    ep = new_endpoint()
    async with replicas(redis_aof_server.url, endpoint=ep, clock=None) as [e]:
        for i in range(200):
            await e.submit(f"old{i}", b'{"i":%d}' % i, low_priority=i % 7 == 0)
        taken = await e.take("w", 50)
        for t in taken[:25]:
            await e.done("w", t.id, S.COMPLETED, output=b'"before"')
        await asyncio.sleep(1.5)  # past appendfsync everysec
        for i in range(50):  # may or may not survive: no claim is made about them
            await e.submit(f"late{i}", b"{}")
        redis_aof_server.kill9()
    redis_aof_server.start()
    async with replicas(redis_aof_server.url, endpoint=ep, clock=None) as [e]:
        records = {f"old{i}": await e.status(f"old{i}") for i in range(200)}
        assert all(r is not None for r in records.values())
        done = {t.id for t in taken[:25]}
        for job_id, r in records.items():
            assert r is not None
            if job_id in done:
                assert (r.status, r.output) == (S.COMPLETED, b'"before"')
            elif job_id in {t.id for t in taken}:
                assert (r.status, r.worker_id) == (S.IN_PROGRESS, "w")
        # The dead worker's leases lapse, and every accepted job then completes.
        assert await e.leave("w") == 25
        while batch := await e.take("w2", 64):
            for t in batch:
                await e.done("w2", t.id, S.COMPLETED, output=b'"after"')
        for job_id in records:
            r = await e.status(job_id)
            assert r is not None and r.status is S.COMPLETED, job_id
        counts = await e.counts()
        late = sum([await e.status(f"late{i}") is not None for i in range(50)])
        assert counts["COMPLETED"] == 200 + late
        assert counts["IN_QUEUE"] == counts["IN_PROGRESS"] == 0


async def test_every_read_answers_store_error_while_redis_is_down(redis_aof_server: RedisServer) -> None:
    # A StoreError is what serve answers 503; a redis-py error escaping here would be a 500.
    async with replicas(redis_aof_server.url, clock=None) as [e]:
        await e.submit("a", b"{}")
        await e.take("w", 1)
        redis_aof_server.kill9()
        for read in (e.health, e.counts, e.workers, lambda: e.requests(10, 0), lambda: e.status("a")):
            with pytest.raises(StoreError, match="Redis unavailable"):
                await read()
        redis_aof_server.start()
        assert [r["jobs"] for r in await e.workers()] == [["a"]]
