"""Two engines (two serve replicas, separate connections) on one real redis-server: push wake-ups, no polling."""

from __future__ import annotations

import asyncio

import pytest
from redis_engine import Clock, replicas
from redis_server import RedisServer

from benchmarks.redis_micro import CountingConnection
from handler_sdk.models import JobStatus as S


async def test_a_runsync_wait_on_one_replica_ends_when_a_worker_on_the_other_finishes(redis_url: str) -> None:
    CountingConnection.reset()
    async with replicas(redis_url, 2, connection_class=CountingConnection) as [a, b]:
        await a.submit("s", b"1", sync=True)
        before = CountingConnection.sent
        waiter = asyncio.create_task(a.wait_terminal("s", 30))
        await asyncio.sleep(0.05)
        [t] = await b.take("w", 1)
        await b.stream("w", t.id, [b"1"], [None])  # a change that is not the end: the waiter keeps waiting
        await asyncio.sleep(0.3)
        assert not waiter.done()
        await b.done("w", t.id, S.COMPLETED, output=b'"ok"')
        r = await asyncio.wait_for(waiter, 10)
        assert r is not None and (r.status, r.output) == (S.COMPLETED, b'"ok"')
        # a's status read before and after; b's take, stream and done: nothing while it waited.
        assert CountingConnection.sent - before == 5


async def test_a_wait_that_times_out_returns_the_job_as_it_is(redis_url: str) -> None:
    async with replicas(redis_url) as [a]:
        await a.submit("s", b"1")
        r = await a.wait_terminal("s", 0.05)
        assert r is not None and r.status is S.IN_QUEUE
        assert await asyncio.wait_for(a.wait_terminal("unknown", 60), 10) is None  # at once, not after 60 s
        r = await a.submit_and_wait("t", b"1", 0.05)
        assert r is not None and r.status is S.IN_QUEUE


async def test_wait_change_wakes_on_a_stream_item_from_the_other_replica(redis_url: str) -> None:
    async with replicas(redis_url, 2) as [a, b]:
        await a.submit("j", b"1")
        await b.take("w", 1)
        waiter = asyncio.create_task(a.wait_change("j", 30))
        await asyncio.sleep(0.05)
        await b.stream("w", "j", [b"1"], [None])
        assert await asyncio.wait_for(waiter, 10) == ["IN_PROGRESS"]
        assert await a.wait_change("j", 0.01) == []


async def test_a_wait_ends_when_the_job_is_purged_on_the_other_replica(redis_url: str) -> None:
    async with replicas(redis_url, 2) as [a, b]:
        await a.submit("s", b"1")
        waiter = asyncio.create_task(a.wait_terminal("s", 30))
        await asyncio.sleep(0.05)
        assert await b.purge() == 1
        assert await asyncio.wait_for(waiter, 10) is None


async def test_a_held_take_on_one_replica_wakes_when_the_other_queues_work(redis_url: str) -> None:
    async with replicas(redis_url, 2) as [a, b]:
        taker = asyncio.create_task(a.take("w", 1, wait=30))
        await asyncio.sleep(0.1)
        assert not taker.done()
        await b.submit("j", b"1")
        taken = await asyncio.wait_for(taker, 10)
        assert [t.id for t in taken] == ["j"]


async def test_a_held_take_returns_empty_after_its_wait(redis_url: str) -> None:
    async with replicas(redis_url) as [a]:
        assert await a.take("w", 1, wait=0.05) == []


async def test_a_held_stop_poll_wakes_when_the_other_replica_cancels(redis_url: str) -> None:
    async with replicas(redis_url, 2) as [a, b]:
        await b.submit("j", b"1")
        await a.take("w", 1)
        poll = asyncio.create_task(a.stops("w", wait=30))
        await asyncio.sleep(0.05)
        await b.cancel("j")
        assert await asyncio.wait_for(poll, 10) == ["j"]


async def test_a_lapsed_lease_is_requeued_once_when_both_replicas_tick(redis_url: str) -> None:
    clock = Clock()
    async with replicas(redis_url, 2, clock=clock) as [a, b]:
        for i in range(20):
            await a.submit(f"j{i}", b"1")
        await a.take("dead", 20)
        clock.advance(1_001)
        results = await asyncio.gather(a.tick(), b.tick(), a.tick(), b.tick())
        assert sum(lapsed for _, lapsed in results) == 20
        h = await b.health()
        assert (h["jobs"]["retried"], h["jobs"]["inQueue"], h["jobs"]["inProgress"]) == (20, 20, 0)


async def test_the_change_feed_resubscribes_after_redis_restarts(redis_aof_server: RedisServer) -> None:
    async with replicas(redis_aof_server.url, 2) as [a, b]:
        await a.submit("j", b"1")
        await asyncio.sleep(0.05)
        redis_aof_server.kill9()
        await asyncio.sleep(0.3)
        redis_aof_server.start()
        for _ in range(200):  # a's feed reconnects on its own
            if a.feed.subscriptions >= 2:
                break
            await asyncio.sleep(0.05)
        assert a.feed.subscriptions >= 2
        # The job exists before a waits on it: a wait on an unknown job returns None at once, and after the restart
        # b's submit (reconnecting first) could reach Redis after a's read.
        await b.submit("x", b"1")
        waiter = asyncio.create_task(a.wait_terminal("x", 30))
        await asyncio.sleep(0.05)
        [t] = [t for t in await b.take("w", 5) if t.id == "x"]
        await b.done("w", t.id, S.COMPLETED)
        r = await asyncio.wait_for(waiter, 10)
        assert r is not None and r.status is S.COMPLETED


async def test_a_take_that_emptied_the_queue_lets_the_next_take_wait_without_asking_redis(redis_url: str) -> None:
    CountingConnection.reset()
    async with replicas(redis_url, 2, connection_class=CountingConnection) as [a, b]:
        await b.submit("j1", b"1")
        assert [t.id for t in await a.take("w", 5, wait=1)] == ["j1"]  # fewer than asked for: the queue is empty
        before = CountingConnection.sent
        nxt = asyncio.create_task(a.take("w", 5, wait=60))
        await asyncio.sleep(0.2)
        assert CountingConnection.sent == before  # the next take waits for work, no take script sent
        await b.submit("j2", b"1")
        assert [t.id for t in await asyncio.wait_for(nxt, 10)] == ["j2"]
        assert CountingConnection.sent - before == 2  # b's submit and a's one take once it was announced
        await b.submit("j3", b"1")  # queued while a has no take open: its next take asks at once
        assert [t.id for t in await asyncio.wait_for(a.take("w", 5, wait=60), 10)] == ["j3"]


async def test_round_trips_per_job_stay_within_the_goal(redis_url: str) -> None:
    from benchmarks.redis_micro import round_trips

    rt = await round_trips(redis_url, jobs=20)
    assert rt["run"] <= 8
    assert rt["runsync"] <= 6


@pytest.mark.parametrize("n", [1, 2, 4])
async def test_a_queued_job_costs_the_same_round_trips_however_many_replicas_are_idle(redis_url: str, n: int) -> None:
    from benchmarks.redis_micro import replica_round_trips

    rt = await replica_round_trips(redis_url, n, jobs=12)
    # Rate limit + submit, one take, done, rate limit + read: no empty take from the other idle replicas.
    assert (rt["run"], rt["runsync"]) == (6, 5)
    assert rt["passed"] == 0
