"""Each transition of the Redis job state engine, on a real redis-server, with a fake clock."""

from __future__ import annotations

import json

import pytest
from redis_engine import Clock, replicas

from handler_sdk.errors import Conflict, NotFound
from handler_sdk.models import JobStatus as S
from handler_sdk.serve.state.redis_jobs import RedisJobs


async def submitted(e: RedisJobs, job_id: str, **kw: object) -> str:
    await e.submit(job_id, b'{"x":1}', **kw)  # type: ignore[arg-type]
    return job_id


async def status(e: RedisJobs, job_id: str) -> S:
    r = await e.status(job_id)
    assert r is not None
    return r.status


async def test_submit_queues_job_and_counts_it(redis_url: str) -> None:
    async with replicas(redis_url) as [e]:
        await submitted(e, "a", ttl=5000, execution_timeout=100, meta=b"hook")
        r = await e.status("a")
        assert r is not None
        assert (r.status, r.input, r.ttl, r.execution_timeout, r.meta) == (S.IN_QUEUE, b'{"x":1}', 5000, 100, b"hook")
        assert r.created == e.clock()
        assert (await e.health())["jobs"]["inQueue"] == 1
        with pytest.raises(Conflict):
            await e.submit("a", b"1")
        assert await e.status("nope") is None


async def test_take_leases_normal_jobs_before_low_priority_in_order(redis_url: str) -> None:
    async with replicas(redis_url) as [e]:
        await submitted(e, "low", low_priority=True)
        for i in ("n1", "n2"):
            await submitted(e, i)
        taken = await e.take("w1", 2)
        assert [t.id for t in taken] == ["n1", "n2"]
        assert [t.id for t in await e.take("w1", 5)] == ["low"]
        assert await e.take("w1", 5) == []
        r = await e.status("n1")
        assert r is not None and (r.status, r.worker_id, r.started) == (S.IN_PROGRESS, "w1", e.clock())


async def test_take_drops_ids_of_cancelled_jobs_from_the_queue(redis_url: str) -> None:
    async with replicas(redis_url) as [e]:
        await submitted(e, "a")
        await submitted(e, "b")
        assert await e.cancel("a") is S.CANCELLED
        assert [t.id for t in await e.take("w", 5)] == ["b"]
        assert await e.client.llen(e.prefix + "q") == 0  # type: ignore[misc]


async def test_result_counts_only_from_the_lease_holder(redis_url: str) -> None:
    async with replicas(redis_url) as [e]:
        await submitted(e, "a")
        await e.take("w1", 1)
        with pytest.raises(Conflict, match="not leased to worker w2"):
            await e.done("w2", "a", S.COMPLETED, output=b'"stolen"')
        await e.done("w1", "a", S.COMPLETED, output=b'"ok"')
        r = await e.status("a")
        assert r is not None and (r.status, r.output, r.ended) == (S.COMPLETED, b'"ok"', e.clock())
        with pytest.raises(Conflict, match="is COMPLETED"):
            await e.done("w1", "a", S.FAILED, error="late")
        with pytest.raises(NotFound):
            await e.done("w1", "unknown", S.COMPLETED)
        h = (await e.health())["jobs"]
        assert (h["completed"], h["inProgress"]) == (1, 0)


async def test_failed_result_keeps_error_and_details(redis_url: str) -> None:
    async with replicas(redis_url) as [e]:
        await submitted(e, "a")
        await e.take("w", 1)
        await e.done("w", "a", S.FAILED, error="boom", details=b'{"error_type":"ValueError"}')
        r = await e.status("a")
        assert r is not None and (r.error, r.details, r.output) == ("boom", b'{"error_type":"ValueError"}', None)
        assert (await e.health())["jobs"]["failed"] == 1


async def test_stream_items_are_numbered_in_order_and_the_cursor_moves_on(redis_url: str) -> None:
    async with replicas(redis_url) as [e]:
        await submitted(e, "a")
        await e.take("w", 1)
        assert await e.stream("w", "a", [b"1", b'"two"'], [None, b'{"t":5}']) == 2
        st, items = await e.read_stream("a")
        assert st is S.IN_PROGRESS
        assert [json.loads(i) for i in items] == [
            {"output": 1, "metrics": {"stream_index": 0, "scenario": "stream", "attempt": 1}},
            {"output": "two", "metrics": {"t": 5, "stream_index": 1, "scenario": "stream", "attempt": 1}},
        ]
        assert (await e.read_stream("a"))[1] == []
        assert await e.stream("w", "a", [b"3"], [b"{}"]) == 3
        assert [json.loads(i)["output"] for i in (await e.read_stream("a"))[1]] == [3]
        assert len((await e.read_stream("a", start=1))[1]) == 2  # an explicit start leaves the cursor alone
        assert (await e.read_stream("a"))[1] == []
        with pytest.raises(Conflict):
            await e.stream("other", "a", [b"4"], [None])
        with pytest.raises(NotFound):
            await e.read_stream("unknown")


async def test_progress_sets_the_output_of_a_running_job(redis_url: str) -> None:
    async with replicas(redis_url) as [e]:
        await submitted(e, "a")
        await e.take("w", 1)
        await e.progress("w", "a", b'"half"')
        r = await e.status("a")
        assert r is not None and r.output == b'"half"'
        with pytest.raises(Conflict):
            await e.progress("x", "a", b'"no"')


async def test_cancel_of_a_running_job_tells_its_worker_to_stop(redis_url: str) -> None:
    async with replicas(redis_url) as [e]:
        await submitted(e, "a")
        await e.take("w", 1)
        assert await e.cancel("a") is S.CANCELLED
        assert await e.stops("w") == ["a"]
        assert await e.stops("w") == []
        assert await e.cancel("a") is S.CANCELLED  # terminal: unchanged
        with pytest.raises(Conflict):
            await e.done("w", "a", S.COMPLETED)
        with pytest.raises(NotFound):
            await e.cancel("unknown")
        h = (await e.health())["jobs"]
        assert (h["inProgress"], h["inQueue"]) == (0, 0)


async def test_cancel_of_a_finished_job_keeps_its_result(redis_url: str) -> None:
    async with replicas(redis_url) as [e]:
        await submitted(e, "a")
        await e.take("w", 1)
        await e.done("w", "a", S.COMPLETED, output=b"1")
        assert await e.cancel("a") is S.COMPLETED
        r = await e.status("a")
        assert r is not None and r.output == b"1"


async def test_retry_queues_a_failed_job_again_with_a_fresh_stream(redis_url: str) -> None:
    clock = Clock()
    async with replicas(redis_url, clock=clock) as [e]:
        await submitted(e, "a", ttl=10_000)
        await e.take("w", 1)
        await e.stream("w", "a", [b"1"], [None])
        await e.done("w", "a", S.FAILED, error="x")
        clock.advance(50)
        await e.retry("a")
        r = await e.status("a")
        assert r is not None
        assert (r.status, r.retries, r.error, r.started, r.worker_id, r.stream_len, r.requeued) == (
            S.IN_QUEUE, 1, None, None, None, 0, clock.t,
        )  # fmt: skip
        assert [t.id for t in await e.take("w2", 1)] == ["a"]
        with pytest.raises(Conflict, match="only FAILED or TIMED_OUT"):
            await e.retry("a")
        with pytest.raises(NotFound):
            await e.retry("unknown")
        assert (await e.health())["jobs"]["failed"] == 0


async def test_lapsed_lease_requeues_once_at_the_front_then_fails_at_max_attempts(redis_url: str) -> None:
    clock = Clock()
    async with replicas(redis_url, clock=clock, max_attempts=2) as [e]:
        await submitted(e, "a")
        await submitted(e, "b")
        await e.take("w1", 1)
        clock.advance(999)
        assert (await e.tick())[1] == 0  # the lease holds until lease_ms have passed
        clock.advance(2)
        assert (await e.tick())[1] == 1
        assert (await e.tick())[1] == 0  # once only
        r = await e.status("a")
        assert r is not None and (r.status, r.retries, r.worker_id) == (S.IN_QUEUE, 1, None)
        assert [t.id for t in await e.take("w2", 1)] == ["a"]  # at the front, before b
        with pytest.raises(Conflict):
            await e.done("w1", "a", S.COMPLETED)  # the lost worker's late result
        clock.advance(1_001)
        await e.tick()
        r = await e.status("a")
        assert r is not None and r.status is S.FAILED and r.error is not None and "WorkerLost" in r.error
        assert r.details is not None and json.loads(r.details)["error_type"] == "WorkerLost"
        h = (await e.health())["jobs"]
        assert (h["retried"], h["failed"], h["inQueue"]) == (2, 1, 1)


async def test_a_worker_that_pings_keeps_its_lease(redis_url: str) -> None:
    clock = Clock()
    async with replicas(redis_url, clock=clock) as [e]:
        await submitted(e, "a")
        await e.take("w", 1)
        for _ in range(5):
            clock.advance(600)
            await e.ping("w", ["a"])
            await e.tick()
        assert await status(e, "a") is S.IN_PROGRESS


async def test_ping_tells_a_worker_to_stop_jobs_it_no_longer_holds(redis_url: str) -> None:
    async with replicas(redis_url) as [e]:
        await submitted(e, "a")
        await submitted(e, "b")
        await e.take("w", 2)
        await e.cancel("a")
        await e.stops("w")
        await e.ping("w", ["a", "b"])
        assert await e.stops("w") == ["a"]


async def test_leave_requeues_the_workers_jobs(redis_url: str) -> None:
    async with replicas(redis_url) as [e]:
        await submitted(e, "a")
        await e.take("w", 1)
        assert await e.leave("w") == 1
        assert await status(e, "a") is S.IN_QUEUE
        assert (await e.health())["workers"] == {"idle": 0, "running": 0, "initializing": 0}


async def test_hand_back_queues_again_without_counting_an_attempt(redis_url: str) -> None:
    async with replicas(redis_url) as [e]:
        for i in "abc":
            await submitted(e, i)
        await e.take("w", 2)
        assert await e.hand_back("w", ["a", "c"]) == 1  # c is not leased to w
        r = await e.status("a")
        assert r is not None and (r.status, r.retries) == (S.IN_QUEUE, 0)
        assert (await e.health())["jobs"]["retried"] == 0


async def test_ttl_times_out_a_queued_job_and_a_retry_starts_it_over(redis_url: str) -> None:
    clock = Clock()
    async with replicas(redis_url, clock=clock) as [e]:
        await submitted(e, "a", ttl=500)
        clock.advance(500)
        await e.tick()
        r = await e.status("a")
        assert r is not None and r.status is S.TIMED_OUT and r.error == "TimeoutError: job exceeded its ttl of 500 ms"
        clock.advance(100)
        await e.retry("a")
        clock.advance(499)
        await e.tick()
        assert await status(e, "a") is S.IN_QUEUE  # the old deadline is not this job's any more
        clock.advance(1)
        await e.tick()
        assert await status(e, "a") is S.TIMED_OUT
        assert await e.take("w", 1) == []


async def test_execution_timeout_backstop_times_out_a_running_job_and_stops_it(redis_url: str) -> None:
    clock = Clock()
    async with replicas(redis_url, clock=clock, lease_ms=60_000) as [e]:
        await submitted(e, "a", execution_timeout=200)
        [t] = await e.take("w", 1)
        assert t.execution_timeout == 200
        clock.advance(299)  # 200 + grace 100
        await e.tick()
        assert await status(e, "a") is S.IN_PROGRESS
        clock.advance(1)
        await e.tick()
        assert await status(e, "a") is S.TIMED_OUT
        assert await e.stops("w") == ["a"]


async def test_retention_deletes_the_record_its_stream_and_its_count(redis_url: str) -> None:
    clock = Clock()
    async with replicas(redis_url, clock=clock, run_retention_ms=1_000, sync_retention_ms=100) as [e]:
        await submitted(e, "a")
        await submitted(e, "s", sync=True)
        await e.take("w", 2)
        await e.stream("w", "a", [b"1"], [None])
        await e.done("w", "a", S.COMPLETED, output=b"1")
        await e.done("w", "s", S.COMPLETED, output=b"2")
        r = await e.status("s")
        assert r is not None and r.input is None  # a finished /runsync record drops its input
        clock.advance(100)
        await e.tick()
        assert await e.status("s") is None
        assert await e.status("a") is not None
        clock.advance(900)
        await e.tick()
        assert await e.status("a") is None
        assert await e.client.exists(e.prefix + "stream:a") == 0
        assert (await e.counts()).get("COMPLETED") == 0


async def test_status_with_a_ttl_shortens_retention(redis_url: str) -> None:
    clock = Clock()
    async with replicas(redis_url, clock=clock) as [e]:
        await submitted(e, "a")
        await e.take("w", 1)
        await e.done("w", "a", S.COMPLETED)
        r = await e.status("a", ttl=50)
        assert r is not None and r.retention == 50
        clock.advance(50)
        await e.tick()
        assert await e.status("a") is None


async def test_purge_deletes_only_queued_jobs(redis_url: str) -> None:
    async with replicas(redis_url) as [e]:
        for i in "abcd":
            await submitted(e, i, low_priority=i == "d")
        await e.take("w", 1)
        await e.cancel("b")
        assert await e.purge() == 2  # c and d
        assert await status(e, "a") is S.IN_PROGRESS
        assert await status(e, "b") is S.CANCELLED
        assert await e.status("c") is None and await e.status("d") is None
        h = (await e.health())["jobs"]
        assert (h["inQueue"], h["inProgress"]) == (0, 1)


async def test_health_tells_idle_running_and_initializing_workers(redis_url: str) -> None:
    async with replicas(redis_url) as [e]:
        await submitted(e, "a")
        await e.take("busy", 1)
        await e.take("idle", 1)
        await e.ping("starting", initializing=True)
        assert (await e.health())["workers"] == {"idle": 1, "running": 1, "initializing": 1}


async def test_workers_snapshot_names_each_worker_with_its_state_jobs_and_last_ping(redis_url: str) -> None:
    clock = Clock()
    async with replicas(redis_url, clock=clock) as [e]:
        await submitted(e, "a")
        await submitted(e, "b")
        await e.take("busy", 2)
        clock.advance(250)
        await e.take("idle", 1)
        await e.ping("starting", initializing=True)
        rows = {r["id"]: r for r in await e.workers()}
        assert rows == {
            "busy": {"id": "busy", "state": "running", "jobs": ["a", "b"], "lastPing": 1_000_000},
            "idle": {"id": "idle", "state": "idle", "jobs": [], "lastPing": 1_000_250},
            "starting": {"id": "starting", "state": "initializing", "jobs": [], "lastPing": 1_000_250},
        }


async def test_requests_lists_newest_first_and_filters_by_status(redis_url: str) -> None:
    clock = Clock()
    async with replicas(redis_url, clock=clock) as [e]:
        for i in "abc":
            await submitted(e, i)
            clock.advance(10)
        await e.take("w", 1)
        page = await e.requests(2, 0)
        assert [r["id"] for r in page["requests"]] == ["c", "b"] and page["total"] == 3
        page = await e.requests(10, 0, S.IN_PROGRESS)
        assert page["total"] == 1 and page["requests"][0]["id"] == "a" and page["requests"][0]["delayTime"] == 30


async def test_requests_lists_jobs_of_one_millisecond_newest_first_too(redis_url: str) -> None:
    """Jobs submitted within one millisecond (a fast client, or a frozen clock) list in reverse submission order:
    the listing's order never falls back on the ids, which are random."""
    clock = Clock()
    async with replicas(redis_url, clock=clock) as [e]:
        ids = list("qzakmbwpcy")  # in no sorted order
        for job_id in ids:
            await submitted(e, job_id)
        page = await e.requests(20, 0)
        assert [r["id"] for r in page["requests"]] == ids[::-1]
        clock.advance(-5)  # another replica's clock, a little behind: still listed as the newest
        await submitted(e, "late")
        assert (await e.requests(1, 0))["requests"][0]["id"] == "late"


async def test_two_endpoints_on_one_redis_keep_apart_in_one_hash_slot_each(redis_url: str) -> None:
    async with replicas(redis_url, endpoint="one") as [a], replicas(redis_url, endpoint="two") as [b]:
        await submitted(a, "x")
        await a.take("w", 1)
        await a.stream("w", "x", [b"1"], [None])
        assert await b.status("x") is None
        assert await b.take("w", 1) == []
        keys = [k.decode() for k in await a.client.keys("*")]
        assert {k.split(":")[1] for k in keys} == {"{one}", "{two}"}
        assert all(k.startswith("hsdk:") for k in keys)
        assert "hsdk:{two}:job:x" not in keys


async def test_the_library_is_loaded_again_after_redis_forgets_it(redis_url: str) -> None:
    async with replicas(redis_url) as [e]:
        await e.client.function_flush()
        await submitted(e, "a")
        assert await status(e, "a") is S.IN_QUEUE


async def test_the_state_package_imports_no_aiohttp() -> None:
    import ast
    from pathlib import Path

    import handler_sdk.serve.state as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "aiohttp" for n in names), path


async def test_a_requeued_job_keeps_its_stream_and_numbers_the_next_attempt_on(redis_url: str) -> None:
    clock = Clock()
    async with replicas(redis_url, clock=clock) as [e]:
        await submitted(e, "a")
        await e.take("w1", 1)
        await e.stream("w1", "a", [b"1"], [b'{"attempt":9,"stream_index":7,"t":1}'])  # our keys are ours
        clock.advance(1_000)
        await e.tick()
        assert [t.id for t in await e.take("w2", 1)] == ["a"]
        await e.stream("w2", "a", [b"2"], [None])
        items = [json.loads(i) for i in (await e.read_stream("a"))[1]]
        assert [i["metrics"] for i in items] == [
            {"t": 1, "stream_index": 0, "scenario": "stream", "attempt": 1},
            {"stream_index": 1, "scenario": "stream", "attempt": 2},
        ]
        r = await e.status("a")
        assert r is not None and (r.attempt, r.retries) == (2, 1)


async def test_a_streamed_openai_answer_fails_rather_than_runs_twice_when_its_worker_is_lost(redis_url: str) -> None:
    clock = Clock()
    async with replicas(redis_url, clock=clock) as [e]:
        await submitted(e, "sse", sse=True)
        await submitted(e, "quiet", sse=True)
        await e.take("w", 2)
        await e.stream("w", "sse", [b'"tok"'], [None])
        clock.advance(1_000)
        await e.tick()
        r = await e.status("sse")
        assert r is not None and r.status is S.FAILED and r.error is not None and "cannot be resumed" in r.error
        assert await status(e, "quiet") is S.IN_QUEUE  # nothing sent yet: it runs again
