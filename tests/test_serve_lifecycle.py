"""Job lifecycles on a real endpoint: cancel of every kind, blocking sync handlers, timeouts, retry and retention."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from handler_sdk.errors import Conflict
from handler_sdk.models import CancelReply, JobReply, JobStatus, RunReply
from handler_sdk.serve.state.broker import BrokerConfig
from handler_sdk.worker.loop import WorkerConfig
from tests.conftest import until

# The same tests on both job stores: the embedded default and a real redis-server.
pytestmark = pytest.mark.stores("sqlite", "redis")

JOB_KEYS = set(JobReply.model_fields)
FAST_DRAIN = WorkerConfig(drain_timeout_s=0.2)


def job_reply(body: dict[str, Any]) -> JobReply:
    assert set(body) <= JOB_KEYS, f"unexpected fields in {body}"
    return JobReply.model_validate(body)


async def wait_file(path: Path, timeout: float = 10) -> None:
    async def exists() -> bool:
        return path.exists()

    await until(exists, timeout)


@pytest.fixture
def gates(tmp_path: Path) -> Callable[[str], Path]:
    d = tmp_path / "gates"
    d.mkdir()
    return lambda name: d / name


async def cancel(ep: Any, job_id: str) -> CancelReply:
    return await ep.client.cancel(job_id)


# --- cancel --------------------------------------------------------------------------------------------------


async def test_cancel_of_a_queued_job_ends_it_before_it_ever_runs(endpoint_factory, gates):
    ep = await endpoint_factory("ep_gate.py")
    a = await ep.client.run({"wait_for": str(gates("a")), "tag": "a"})
    await ep.wait_status(a.id, "IN_PROGRESS")
    b = await ep.client.run({"tag": "b"})
    assert (await cancel(ep, b.id)).status is JobStatus.CANCELLED
    st = await ep.client.status(b.id)
    assert st.status is JobStatus.CANCELLED and st.delayTime is None and st.output is None
    gates("a").touch()
    await ep.wait_status(a.id, "COMPLETED")
    c = await ep.client.runsync({"tag": "c"})
    assert c.status is JobStatus.COMPLETED
    # b never ran: still cancelled, no output, never started.
    st = await ep.client.status(b.id)
    assert st.status is JobStatus.CANCELLED and st.output is None and st.workerId is None


async def test_cancel_of_a_running_async_job_cancels_its_task_and_frees_the_slot(endpoint_factory, gates):
    ep = await endpoint_factory("ep_gate.py")
    marker = gates("task-cancelled")
    a = await ep.client.run({"wait_for": str(gates("never")), "on_cancel": str(marker)})
    await ep.wait_status(a.id, "IN_PROGRESS")
    b = await ep.client.run({"tag": "b"})
    assert (await cancel(ep, a.id)).status is JobStatus.CANCELLED
    st = await ep.client.status(a.id)
    assert st.status is JobStatus.CANCELLED and st.executionTime is not None
    await wait_file(marker)  # the handler saw CancelledError
    assert (await ep.wait_status(b.id, "COMPLETED"))["output"] == {"tag": "b"}


async def test_cancel_of_a_blocked_sync_job_is_immediate_frees_its_slot_and_discards_the_late_result(
    endpoint_factory, gates
):
    ep = await endpoint_factory("ep_blocking.py", worker=FAST_DRAIN)
    hold, late = gates("hold"), gates("late-done")
    a = await ep.client.run({"wait_for": str(hold), "done_file": str(late), "tag": "late"})
    await ep.wait_status(a.id, "IN_PROGRESS")

    # The thread blocks, the endpoint does not: health answers and another job completes meanwhile.
    assert (await ep.client.health()).jobs.inProgress == 1
    other = await ep.client.runsync({"tag": "other"})
    assert other.status is JobStatus.COMPLETED and other.output == {"tag": "other"}

    assert (await cancel(ep, a.id)).status is JobStatus.CANCELLED
    assert (await ep.client.status(a.id)).status is JobStatus.CANCELLED
    # Both slots are free again although a's thread is still blocked: two new blocking jobs both start.
    extra = gates("extra")
    started = [(await ep.client.run({"wait_for": str(extra), "tag": i})).id for i in range(2)]
    for job_id in started:
        await ep.wait_status(job_id, "IN_PROGRESS")
    assert not late.exists(), "the abandoned thread was expected to still be blocked"

    hold.touch()
    extra.touch()
    await wait_file(late)  # the abandoned thread returned its result
    for job_id in started:
        await ep.wait_status(job_id, "COMPLETED")
    st = await ep.client.status(a.id)
    assert st.status is JobStatus.CANCELLED and st.output is None


async def test_a_cancelled_sync_handler_sees_job_cancelled_and_gives_its_thread_back(endpoint_factory, gates):
    ep = await endpoint_factory("ep_polite.py")
    noticed = gates("noticed")
    body = await ep.client.run({"noticed": str(noticed)})
    await ep.wait_status(body.id, "IN_PROGRESS")
    assert (await cancel(ep, body.id)).status is JobStatus.CANCELLED
    await wait_file(noticed)  # long before its 60 s are up
    assert noticed.read_text() == "cancelled"

    async def returned() -> bool:
        return ep.server.pool.abandoned == 0

    await until(returned)  # its thread is back in the pool
    st = await ep.client.status(body.id)
    assert st.status is JobStatus.CANCELLED and st.output is None  # its late result was discarded


@pytest.mark.parametrize("target", ["ep_stream.py:stepper", "ep_stream.py:sync_stepper"])
async def test_cancel_of_a_running_generator_stops_its_stream(endpoint_factory, gates, target):
    ep = await endpoint_factory(target, worker=FAST_DRAIN)
    d = gates("steps")
    d.mkdir()
    body = await ep.client.run({"dir": str(d), "n": 3})
    (d / "0").touch()

    async def first_item() -> list[Any]:
        _, s = await ep.get(f"stream/{body.id}?from=0")
        return s["stream"]

    assert [i["output"] for i in await until(first_item)] == [{"i": 0}]
    assert (await cancel(ep, body.id)).status is JobStatus.CANCELLED
    (d / "1").touch()
    (d / "2").touch()
    await asyncio.sleep(0.3)
    _, s = await ep.get(f"stream/{body.id}")
    assert s["status"] == "CANCELLED"
    assert [i["output"] for i in s["stream"]] == [{"i": 0}]  # not yet returned, so it still comes back
    _, s = await ep.get(f"stream/{body.id}")
    assert s == {"id": body.id, "status": "CANCELLED", "stream": []}


async def test_cancel_of_a_finished_job_replies_its_terminal_status_unchanged(endpoint_factory, tmp_path):
    ep = await endpoint_factory("ep_gate.py")
    ok = await ep.client.runsync({"tag": "x"})
    failed = await ep.client.runsync({"fail_unless": str(tmp_path / "absent")})
    assert (await cancel(ep, ok.id)).status is JobStatus.COMPLETED
    assert (await cancel(ep, failed.id)).status is JobStatus.FAILED
    assert (await ep.client.status(ok.id)).output == {"tag": "x"}
    assert (await ep.client.status(failed.id)).status is JobStatus.FAILED
    q = await ep.client.run({"wait_for": str(tmp_path / "never")})
    await ep.wait_status(q.id, "IN_PROGRESS")
    assert (await cancel(ep, q.id)).status is JobStatus.CANCELLED
    assert (await cancel(ep, q.id)).status is JobStatus.CANCELLED


# --- timeouts ------------------------------------------------------------------------------------------------


async def test_execution_timeout_ends_a_running_job_timed_out(endpoint_factory, gates):
    ep = await endpoint_factory("ep_gate.py")
    body = await ep.client.run({"wait_for": str(gates("never"))}, policy={"executionTimeout": 200})
    st = job_reply(await ep.wait_status(body.id, "TIMED_OUT"))
    assert st.error is not None and st.error.startswith("TimeoutError: ")
    assert st.errorDetails is not None and st.errorDetails.error_type == "TimeoutError"
    assert st.executionTime is not None and st.executionTime >= 190
    # The slot is free again.
    assert (await ep.client.runsync({"tag": "next"})).output == {"tag": "next"}


async def test_execution_timeout_on_blocked_sync_jobs_frees_their_slots(endpoint_factory, gates):
    ep = await endpoint_factory("ep_blocking.py", worker=FAST_DRAIN)
    hold = gates("hold")
    try:
        ids = [(await ep.client.run({"wait_for": str(hold)}, policy={"executionTimeout": 200})).id for _ in range(2)]
        for job_id in ids:
            await ep.wait_status(job_id, "TIMED_OUT")
        # Both threads are still blocked, yet a new job gets a slot.
        body = await ep.client.runsync({"tag": "after"})
        assert body.status is JobStatus.COMPLETED
    finally:
        hold.touch()


async def test_ttl_runs_out_while_a_job_waits_in_the_queue(endpoint_factory, gates):
    ep = await endpoint_factory("ep_gate.py")
    a = await ep.client.run({"wait_for": str(gates("a"))})
    await ep.wait_status(a.id, "IN_PROGRESS")
    b = await ep.client.run({"tag": "b"}, policy={"ttl": 300})
    st = job_reply(await ep.wait_status(b.id, "TIMED_OUT"))
    assert st.delayTime is None  # it never started
    assert st.error is not None and "ttl" in st.error
    gates("a").touch()
    await ep.wait_status(a.id, "COMPLETED")
    await asyncio.sleep(0.2)
    st = await ep.client.status(b.id)
    assert st.status is JobStatus.TIMED_OUT and st.output is None


async def test_ttl_counts_running_time_too(endpoint_factory, gates):
    ep = await endpoint_factory("ep_gate.py")
    marker = gates("task-cancelled")
    body = await ep.client.run({"wait_for": str(gates("never")), "on_cancel": str(marker)}, policy={"ttl": 400})
    await ep.wait_status(body.id, "IN_PROGRESS")
    st = job_reply(await ep.wait_status(body.id, "TIMED_OUT"))
    assert st.delayTime is not None and st.error is not None and "ttl" in st.error
    await wait_file(marker)  # the endpoint told the worker, which cancelled the task
    assert (await ep.client.runsync({"tag": "next"})).status is JobStatus.COMPLETED


@pytest.mark.parametrize("target", ["ep_errors.py:slow", "ep_errors.py:slow_sync"])
async def test_the_handler_timeout_option_ends_a_job_timed_out(endpoint_factory, target):
    ep = await endpoint_factory(target)
    st = await ep.client.runsync({})
    assert st.status is JobStatus.TIMED_OUT
    assert st.error is not None and "timeout" in st.error
    assert st.output is None  # slow_sync returns once cancelled; that late result is discarded
    assert (await ep.client.health()).jobs.failed == 1


# --- retry ---------------------------------------------------------------------------------------------------


async def test_retry_of_a_failed_job_queues_it_again_with_the_same_id_and_cleared_output(endpoint_factory, gates):
    ep = await endpoint_factory("ep_gate.py")
    flag = gates("flag")
    body = await ep.client.run({"fail_unless": str(flag), "tag": "second try"})
    job_id = body.id
    failed = job_reply(await ep.wait_status(job_id, "FAILED"))
    assert failed.error is not None

    # Hold the only slot so the retried job is observable in the queue.
    hold = gates("hold")
    blocker = await ep.client.run({"wait_for": str(hold)})
    await ep.wait_status(blocker.id, "IN_PROGRESS")
    assert await ep.client.retry(job_id) == RunReply(id=job_id, status=JobStatus.IN_QUEUE)
    st = await ep.client.status(job_id)
    assert st.status is JobStatus.IN_QUEUE
    assert st.output is None and st.error is None and st.errorDetails is None
    assert st.delayTime is None and st.executionTime is None

    flag.touch()
    hold.touch()
    done = job_reply(await ep.wait_status(job_id, "COMPLETED"))
    assert done.output == {"tag": "second try"} and done.error is None


async def test_retry_of_a_timed_out_job_runs_it_again(endpoint_factory, gates):
    ep = await endpoint_factory("ep_gate.py")
    hold = gates("hold")
    body = await ep.client.run({"wait_for": str(hold), "tag": "t"}, policy={"executionTimeout": 150})
    await ep.wait_status(body.id, "TIMED_OUT")
    hold.touch()
    assert await ep.client.retry(body.id) == RunReply(id=body.id, status=JobStatus.IN_QUEUE)
    done = job_reply(await ep.wait_status(body.id, "COMPLETED"))
    assert done.output == {"tag": "t"} and done.error is None and done.retries == 1


async def test_retry_of_a_job_that_is_not_failed_or_timed_out_is_a_409(endpoint_factory, gates):
    ep = await endpoint_factory("ep_gate.py")
    hold = gates("hold")
    done = await ep.client.runsync({})
    running = await ep.client.run({"wait_for": str(hold)})
    await ep.wait_status(running.id, "IN_PROGRESS")
    queued = await ep.client.run({})
    cancelled = await ep.client.run({})
    await cancel(ep, cancelled.id)
    for job_id, status in [
        (done.id, JobStatus.COMPLETED),
        (running.id, JobStatus.IN_PROGRESS),
        (queued.id, JobStatus.IN_QUEUE),
        (cancelled.id, JobStatus.CANCELLED),
    ]:
        with pytest.raises(Conflict, match=status.value):
            await ep.client.retry(job_id)
        assert (await ep.client.status(job_id)).status is status
    hold.touch()


# --- retention -----------------------------------------------------------------------------------------------


async def test_run_jobs_are_gone_after_the_run_retention(endpoint_factory, gates):
    ep = await endpoint_factory("ep_gate.py", broker=BrokerConfig(run_retention_ms=300, tick_s=0.02))
    hold = gates("hold")
    _, running = await ep.post("run", {"input": {"wait_for": str(hold)}})
    _, done = await ep.post("run", {"input": {"tag": "x"}, "policy": {"lowPriority": False}})
    await ep.wait_status(running["id"], "IN_PROGRESS")
    code, body = await ep.get(f"status/{done['id']}")
    assert code == 200 and body["status"] == "IN_QUEUE"
    await asyncio.sleep(0.6)
    # Retention counts from completion: unfinished jobs are kept however long they take.
    assert (await ep.get(f"status/{running['id']}"))[0] == 200
    assert (await ep.get(f"status/{done['id']}"))[0] == 200
    hold.touch()
    await ep.wait_status(done["id"], "COMPLETED")

    async def gone() -> bool:
        return (await ep.get(f"status/{done['id']}"))[0] == 404

    await until(gone)
    assert (await ep.get(f"stream/{done['id']}"))[0] == 404


async def test_sync_retention_is_separate_from_run_retention(endpoint_factory):
    ep = await endpoint_factory("ep_gate.py", broker=BrokerConfig(sync_retention_ms=200, tick_s=0.02))
    _, run_job = await ep.post("run", {"input": {"tag": "run"}})
    await ep.wait_status(run_job["id"], "COMPLETED")
    _, sync_job = await ep.post("runsync", {"input": {"tag": "sync"}})
    assert sync_job["status"] == "COMPLETED"

    async def gone() -> bool:
        return (await ep.get(f"status/{sync_job['id']}"))[0] == 404

    await until(gone)
    assert (await ep.get(f"status/{run_job['id']}"))[1]["output"] == {"tag": "run"}


async def test_status_ttl_shortens_one_jobs_retention(endpoint_factory, gates):
    ep = await endpoint_factory("ep_gate.py", broker=BrokerConfig(tick_s=0.02))
    hold = gates("hold")
    _, a = await ep.post("runsync", {"input": {"tag": "a"}})
    _, b = await ep.post("runsync", {"input": {"tag": "b"}})
    _, running = await ep.post("run", {"input": {"wait_for": str(hold), "tag": "r"}})
    await ep.wait_status(running["id"], "IN_PROGRESS")
    code, body = await ep.get(f"status/{a['id']}?ttl=200")
    assert code == 200 and body["output"] == {"tag": "a"}
    # On a running job the shorter retention applies once it ends.
    assert (await ep.get(f"status/{running['id']}?ttl=200"))[0] == 200

    async def gone(job_id: str) -> bool:
        return (await ep.get(f"status/{job_id}"))[0] == 404

    await until(lambda: gone(a["id"]))
    assert (await ep.get(f"status/{b['id']}"))[0] == 200
    assert (await ep.get(f"status/{running['id']}"))[0] == 200
    hold.touch()
    await ep.wait_status(running["id"], "COMPLETED")
    await until(lambda: gone(running["id"]))
    assert (await ep.get(f"status/{b['id']}"))[0] == 200


async def test_shutdown_with_nothing_running_does_not_wait_for_the_drain_deadline(endpoint_factory):
    ep = await endpoint_factory("ep_gate.py", worker=WorkerConfig(drain_timeout_s=30))
    assert (await ep.client.runsync({"tag": "x"})).status is JobStatus.COMPLETED
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await ep.server.close()
    # Nothing runs, so nothing is drained: close() waited for the whole deadline (30 s + 5) while a held poll of
    # the in-process worker swallowed its cancel.
    assert loop.time() - t0 < 10
