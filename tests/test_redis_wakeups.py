"""A queued job wakes one idle taker, on whichever replica holds it, and never strands: a wake that reaches a
replica which cannot use it goes on to the next idle taker, and a gone replica's taker is skipped. Engines on one
real redis-server; every held take here waits far longer than the test, so only a wake can end it."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.connection import Connection
from redis_engine import Clock, replicas

from benchmarks.redis_micro import CountingConnection
from handler_sdk.models import JobStatus as S
from handler_sdk.serve.state.redis_jobs import RedisJobs
from handler_sdk.serve.state.scripts import SCRIPTS

HOLD = 600.0


async def idle(e: RedisJobs) -> list[str]:
    """The idle takers in the order they will be woken."""
    return [m.decode() for m in await e.client.zrange(e.prefix + "idle", 0, -1)]  # type: ignore[misc]


async def until_idle(e: RedisJobs, *workers: str) -> None:
    for _ in range(500):
        if await idle(e) == list(workers):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"idle takers {await idle(e)}, expected {list(workers)}")


async def test_a_queued_job_wakes_the_taker_idle_longest_and_no_other(redis_url: str) -> None:
    CountingConnection.reset()
    async with replicas(redis_url, 3, connection_class=CountingConnection) as engines:
        takes = []
        for i, e in enumerate(engines):
            takes.append(asyncio.create_task(e.take(f"w{i}", 1, wait=HOLD)))
            await until_idle(e, *(f"w{j}" for j in range(i + 1)))
        before = CountingConnection.sent
        await engines[2].submit("j", b"1")
        assert [t.id for t in await asyncio.wait_for(takes[0], 10)] == ["j"]
        assert CountingConnection.sent - before == 2  # the submit and w0's take: w1 and w2 were not woken
        assert not takes[1].done() and not takes[2].done()
        assert await idle(engines[0]) == ["w1", "w2"]
        for t in takes[1:]:
            t.cancel()


async def test_a_wake_for_a_worker_with_no_take_waiting_goes_to_the_next_idle_taker(redis_url: str) -> None:
    async with replicas(redis_url, 2) as [a, b]:
        # A take that went away mid-hold (its request handler cancelled): idle in Redis, no take waiting on a.
        gone = asyncio.create_task(a.take("ended", 1, wait=HOLD))
        await until_idle(a, "ended")
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        live = asyncio.create_task(b.take("live", 1, wait=HOLD))
        await until_idle(a, "ended", "live")
        await a.submit("j", b"1")
        assert [t.id for t in await asyncio.wait_for(live, 10)] == ["j"]
        assert a.takes.passed == 1


async def test_a_wake_for_a_worker_with_no_free_slot_goes_to_the_next_idle_taker(redis_url: str) -> None:
    async with replicas(redis_url, 2) as [a, b]:
        await a.submit("first", b"1")
        # Two slots, one job: the queue is empty, so "full" stays idle and its watch is parked for its next take,
        # which it will not send while its one job (say) fills its slots.
        assert [t.id for t in await a.take("full", 2, wait=HOLD)] == ["first"]
        free = asyncio.create_task(b.take("free", 1, wait=HOLD))
        await until_idle(a, "full", "free")
        await b.submit("j", b"1")
        assert [t.id for t in await asyncio.wait_for(free, 10)] == ["j"]
        assert a.takes.passed == 1
        # Its next take asks Redis (the parked watch went with the wake), and finds the queue empty.
        assert await a.take("full", 1) == []


async def test_a_burst_of_jobs_wakes_one_idle_taker_per_job(redis_url: str) -> None:
    async with replicas(redis_url, 2) as [a, b]:
        took = asyncio.create_task(a.take("one", 1, wait=HOLD))
        await until_idle(a, "one")
        other = asyncio.create_task(b.take("other", 1, wait=HOLD))
        await until_idle(a, "one", "other")
        # Two jobs in one burst: "one" takes the first, its slot is full, so it is not idle; "other" takes the next.
        await b.submit("j1", b"1")
        await b.submit("j2", b"1")
        assert [t.id for t in await asyncio.wait_for(took, 10)] == ["j1"]
        assert [t.id for t in await asyncio.wait_for(other, 10)] == ["j2"]
        assert await idle(a) == []


async def test_the_taker_of_a_replica_that_died_is_skipped_for_the_next(redis_url: str) -> None:
    async with replicas(redis_url, 2) as [a, b]:
        dead = asyncio.create_task(a.take("dead", 1, wait=HOLD))
        await until_idle(a, "dead")
        live = asyncio.create_task(b.take("live", 1, wait=HOLD))
        await until_idle(a, "dead", "live")
        # a's process goes away: its pub/sub connection closes with it, and nothing of it tells Redis.
        dead.cancel()
        await asyncio.gather(dead, return_exceptions=True)
        await a.feed.stop()
        await b.submit("j", b"1")
        assert [t.id for t in await asyncio.wait_for(live, 10)] == ["j"]
        assert await idle(b) == []  # the gone taker left with the wake that skipped it


async def test_a_replica_shutting_down_passes_its_wakes_on(redis_url: str) -> None:
    async with replicas(redis_url, 2) as [a, b]:
        leaving = asyncio.create_task(a.take("leaving", 1, wait=HOLD))
        await until_idle(a, "leaving")
        staying = asyncio.create_task(b.take("staying", 1, wait=HOLD))
        await until_idle(a, "leaving", "staying")
        a.interrupt()
        assert await asyncio.wait_for(leaving, 10) == []
        await b.submit("j", b"1")
        assert [t.id for t in await asyncio.wait_for(staying, 10)] == ["j"]


async def test_a_requeued_job_wakes_an_idle_taker(redis_url: str) -> None:
    async with replicas(redis_url, 2) as [a, b]:
        await a.submit("j", b"1")
        [t] = await a.take("quits", 1)
        waiting = asyncio.create_task(b.take("waiting", 1, wait=HOLD))
        await until_idle(a, "waiting")
        assert await a.hand_back("quits", [t.id]) == 1
        assert [t.id for t in await asyncio.wait_for(waiting, 10)] == ["j"]


class SlowConnection(Connection):
    """A real connection whose every reply arrives 0.1 s late: a slow network between serve and Redis."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.1)
        return await super().read_response(*args, **kwargs)


async def test_a_take_whose_hold_ends_during_its_ask_leaves_its_worker_idle_no_more(redis_url: str) -> None:
    # The ask went out held (the worker made idle) and came back past the hold's end: the take asks once more,
    # unheld, rather than return with its worker idle for wakes it will never take.
    async with replicas(redis_url, connection_class=SlowConnection) as [a]:
        assert await a.take("w", 1, wait=0.05) == []
        assert await idle(a) == []


async def test_a_take_whose_hold_ended_leaves_its_worker_idle_no_more(redis_url: str) -> None:
    async with replicas(redis_url) as [a]:
        assert await a.take("w", 1, wait=0.05) == []
        assert await idle(a) == []
        held = asyncio.create_task(a.take("w", 1, wait=HOLD))
        await until_idle(a, "w")
        held.cancel()


async def _wakes_for_a_burst(redis_url: str, slots: int, jobs: int) -> list[str]:
    """Three takers idle with ``slots`` free each, on a replica that never asks (a bare subscriber): the workers
    woken by a burst of ``jobs`` submits."""
    async with replicas(redis_url) as [e]:
        sub = e.client.pubsub()
        await sub.subscribe(e.prefix + "wake:mute")
        await sub.get_message(timeout=5)  # the subscription's confirmation
        for w in ("t0", "t1", "t2"):
            assert await SCRIPTS.call(e.client, "take", e.prefix, e.clock(), w, slots, 1000, 100, "mute", 1) == []
        for i in range(jobs):
            await e.submit(f"j{i}", b"1")
        woken = []
        while (m := await sub.get_message(timeout=0.2)) is not None:
            woken.append(m["data"].decode())
        await sub.aclose()  # type: ignore[no-untyped-call]
        return woken


async def test_a_burst_wakes_one_taker_with_room_for_it_all(redis_url: str) -> None:
    assert await _wakes_for_a_burst(redis_url, slots=100, jobs=5) == ["w t0"]


async def test_a_burst_wakes_one_single_slot_taker_per_job(redis_url: str) -> None:
    assert await _wakes_for_a_burst(redis_url, slots=1, jobs=5) == ["w t0", "w t1", "w t2"]  # then nobody is idle


async def test_a_worker_that_took_through_another_replica_is_woken_where_it_waits_next(redis_url: str) -> None:
    async with replicas(redis_url, 2) as [a, b]:
        await a.submit("first", b"1")
        assert [t.id for t in await a.take("w", 2, wait=HOLD)] == ["first"]  # idle on a, its watch kept there
        assert await b.take("w", 1) == []  # through b (a load balancer), at once: idle no more, and a is told
        nxt = asyncio.create_task(a.take("w", 1, wait=HOLD))  # back on a: it must ask Redis, to be idle again
        await until_idle(a, "w")
        await b.submit("j", b"1")
        assert [t.id for t in await asyncio.wait_for(nxt, 10)] == ["j"]


async def test_a_worker_whose_lease_lapsed_while_idle_asks_again_on_its_next_take(redis_url: str) -> None:
    # Idle on a with its watch parked there, then silent past its lease: b's clock lapses it, which leaves it idle
    # no more. a is told, so the worker's next take there asks Redis (to be idle again) instead of waiting on a
    # watch that no wake will reach.
    clock = Clock()
    async with replicas(redis_url, 2, clock=clock) as [a, b]:
        await a.submit("first", b"1")
        assert [t.id for t in await a.take("w", 2, wait=HOLD)] == ["first"]
        clock.advance(1_000)
        assert (await b.tick())[1] == 1  # its lease lapsed: "first" is queued again
        assert [t.id for t in await asyncio.wait_for(a.take("w", 1, wait=HOLD), 10)] == ["first"]
        nxt = asyncio.create_task(a.take("w", 1, wait=HOLD))
        await until_idle(a, "w")
        await b.submit("j", b"1")
        assert [t.id for t in await asyncio.wait_for(nxt, 10)] == ["j"]


async def test_bursts_on_every_replica_reach_workers_of_every_size_and_none_strands(redis_url: str) -> None:
    """Four replicas, each with workers of 1, 3 and 50 slots holding takes that only a wake can end, and bursts of
    jobs submitted on all of them at once: every job is run, exactly once."""
    ran: list[str] = []

    async def worker(e: RedisJobs, wid: str, slots: int) -> None:
        running: set[asyncio.Task[None]] = set()

        async def run(job_id: str) -> None:
            await asyncio.sleep(0.001 * (hash(job_id) % 5))
            await e.done(wid, job_id, S.COMPLETED)
            ran.append(job_id)

        while True:
            while len(running) >= slots:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for t in await e.take(wid, slots - len(running), wait=HOLD):
                task = asyncio.create_task(run(t.id))
                running.add(task)
                task.add_done_callback(running.discard)

    async with replicas(redis_url, 4) as engines:
        tasks = [
            asyncio.create_task(worker(e, f"r{i}-s{slots}", slots))
            for i, e in enumerate(engines)
            for slots in (1, 3, 50)
        ]
        await until_idle_count(engines[0], 12)
        ids = [f"b{k}-{i}" for k in range(10) for i in range(40)]
        for k in range(10):
            await asyncio.gather(*(engines[i % 4].submit(f"b{k}-{i}", b"1") for i in range(40)))
            await asyncio.sleep(0.01 * (k % 3))
        for _ in range(1000):
            if len(ran) >= len(ids):
                break
            await asyncio.sleep(0.01)
        assert sorted(ran) == sorted(ids)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until_idle_count(e: RedisJobs, n: int) -> None:
    for _ in range(500):
        if len(await idle(e)) == n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"idle takers {await idle(e)}, expected {n}")


async def test_a_woken_taker_that_takes_fewer_than_its_slots_promised_wakes_the_next(redis_url: str) -> None:
    async with replicas(redis_url, 2) as [a, b]:
        sub = a.client.pubsub()
        await sub.subscribe(a.prefix + "wake:mute")
        await sub.get_message(timeout=5)
        # "shrinks" is idle with 3 free slots on a replica that never asks by itself; "other" waits on b.
        assert await SCRIPTS.call(a.client, "take", a.prefix, a.clock(), "shrinks", 3, 1000, 100, "mute", 1) == []
        other = asyncio.create_task(b.take("other", 5, wait=HOLD))
        await until_idle(a, "shrinks", "other")
        for i in range(3):
            await a.submit(f"j{i}", b"1")  # one wake: "shrinks" has room for all three
        assert await sub.get_message(timeout=5) is not None
        assert not other.done()
        # Its concurrency dropped to 1 meanwhile: it takes one, full, with two still queued.
        [t] = await SCRIPTS.call(a.client, "take", a.prefix, a.clock(), "shrinks", 1, 1000, 100, "mute", 1)
        assert t[0] == b"j0"
        assert sorted(x.id for x in await asyncio.wait_for(other, 10)) == ["j1", "j2"]
        await sub.aclose()  # type: ignore[no-untyped-call]
