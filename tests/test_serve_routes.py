"""The client routes of DESIGN section 2 over real HTTP: reply shapes, the queue, timings, progress, health and
requests. Every reply is also validated against the wire models in handler_sdk.models."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from handler_sdk.models import (
    HealthReply,
    JobReply,
    JobStatus,
    PurgeReply,
    RequestsReply,
    RunReply,
    StreamReply,
)
from handler_sdk.serve.http.client import ClientLimits
from handler_sdk.serve.state.broker import BrokerConfig
from handler_sdk.worker.loop import WorkerConfig
from tests.conftest import until

# The same tests on both job stores: the embedded default and a real redis-server.
pytestmark = pytest.mark.stores("sqlite", "redis")

JOB_KEYS = set(JobReply.model_fields)


def job_reply(body: dict[str, Any]) -> JobReply:
    assert set(body) <= JOB_KEYS, f"unexpected fields in {body}"
    return JobReply.model_validate(body)


def run_reply(body: dict[str, Any]) -> RunReply:
    assert set(body) == {"id", "status"}, body
    return RunReply.model_validate(body)


@pytest.fixture
def gate_file(tmp_path: Path) -> Callable[[str], str]:
    def make(name: str) -> str:
        return str(tmp_path / f"gate-{name}")

    return make


def release(path: str) -> None:
    Path(path).touch()


# --- run, runsync, status, status-sync -----------------------------------------------------------------------


async def test_run_replies_id_and_in_queue_then_status_shows_the_finished_job(endpoint_factory):
    ep = await endpoint_factory("echo_async.py")
    code, body = await ep.post("run", {"input": {"hello": "world"}})
    assert code == 200
    r = run_reply(body)
    assert r.status is JobStatus.IN_QUEUE
    assert not r.id.startswith("sync-")
    done = job_reply(await ep.wait_status(r.id, "COMPLETED"))
    assert done.output == {"hello": "world"}
    assert done.delayTime is not None and done.delayTime >= 0
    assert done.executionTime is not None and done.executionTime >= 0
    assert done.workerId == ep.server.local_worker_id
    assert done.error is None and done.errorDetails is None


async def test_runsync_replies_the_whole_finished_job_with_a_sync_id(endpoint_factory):
    ep = await endpoint_factory("echo_async.py")
    code, body = await ep.post("runsync", {"input": {"n": 1}})
    assert code == 200
    r = job_reply(body)
    assert r.id.startswith("sync-")
    assert r.status is JobStatus.COMPLETED
    assert r.output == {"n": 1}
    assert r.delayTime is not None and r.executionTime is not None
    # The finished sync job stays readable on /status within its retention.
    code, again = await ep.get(f"status/{r.id}")
    assert code == 200 and again["output"] == {"n": 1}


async def test_runsync_that_does_not_finish_in_time_replies_only_id_and_status(endpoint_factory, gate_file):
    ep = await endpoint_factory("ep_gate.py")
    g = gate_file("a")
    code, body = await ep.post("runsync?wait=1000", {"input": {"wait_for": g, "tag": "late"}})
    assert code == 200
    r = run_reply(body)
    assert r.id.startswith("sync-")
    assert r.status in (JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS)
    release(g)
    done = await ep.wait_status(r.id, "COMPLETED")
    assert done["output"] == {"tag": "late"}


async def test_runsync_wait_below_the_minimum_is_clamped_up_to_one_second(endpoint_factory, gate_file):
    ep = await endpoint_factory("ep_gate.py")
    g = gate_file("a")
    try:
        for wait in ("1", "-5"):
            t0 = time.monotonic()
            code, body = await ep.post(f"runsync?wait={wait}", {"input": {"wait_for": g}})
            assert code == 200 and set(body) == {"id", "status"}
            # A lower bound only: the reply may come later on a loaded machine, never before the clamped wait.
            assert time.monotonic() - t0 >= 0.95, wait
    finally:
        release(g)


async def test_runsync_wait_above_the_maximum_is_clamped_down(endpoint_factory, gate_file):
    assert (ClientLimits().min_wait_ms, ClientLimits().max_wait_ms, ClientLimits().default_wait_ms) == (
        1_000,
        300_000,
        90_000,
    )
    ep = await endpoint_factory("ep_gate.py", client=ClientLimits(max_wait_ms=1_200, stream_hold_ms=200))
    g = gate_file("a")
    try:
        async with asyncio.timeout(30):  # unclamped, this request would wait for ever
            code, body = await ep.post(f"runsync?wait={10**15}", {"input": {"wait_for": g}})
        assert code == 200
        assert run_reply(body).status is JobStatus.IN_PROGRESS
    finally:
        release(g)


@pytest.mark.parametrize("wait", ["abc", "1.5", "1e3"])
async def test_runsync_wait_that_is_not_an_integer_is_a_400(endpoint_factory, wait):
    ep = await endpoint_factory("echo_async.py")
    code, body = await ep.post(f"runsync?wait={wait}", {"input": {}})
    assert code == 400
    assert "wait" in body["error"]


async def test_status_sync_waits_until_the_job_ends(endpoint_factory, gate_file):
    ep = await endpoint_factory("ep_gate.py")
    g = gate_file("a")
    _, body = await ep.post("run", {"input": {"wait_for": g, "tag": "t"}})
    job_id = body["id"]
    await ep.wait_status(job_id, "IN_PROGRESS")
    waiting = asyncio.create_task(ep.post(f"status-sync/{job_id}?wait=20000"))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "status-sync answered before the job ended"
    release(g)
    code, reply = await waiting
    assert code == 200
    r = job_reply(reply)
    assert r.status is JobStatus.COMPLETED and r.output == {"tag": "t"}


async def test_status_sync_replies_the_unfinished_job_when_its_wait_runs_out(endpoint_factory, gate_file):
    ep = await endpoint_factory("ep_gate.py")
    g = gate_file("a")
    try:
        _, body = await ep.post("run", {"input": {"wait_for": g}})
        await ep.wait_status(body["id"], "IN_PROGRESS")
        for method in ("GET", "POST"):
            code, reply = await ep.call(method, f"status-sync/{body['id']}?wait=1000")
            assert code == 200
            r = job_reply(reply)
            assert r.status is JobStatus.IN_PROGRESS and r.delayTime is not None and r.executionTime is None
    finally:
        release(g)


async def test_status_stream_and_health_answer_both_get_and_post(endpoint_factory):
    ep = await endpoint_factory("echo_async.py")
    _, body = await ep.post("runsync", {"input": {"x": 1}})
    job_id = body["id"]
    for method in ("GET", "POST"):
        code, st = await ep.call(method, f"status/{job_id}")
        assert code == 200 and job_reply(st).output == {"x": 1}
        code, stream = await ep.call(method, f"stream/{job_id}")
        assert code == 200
        assert StreamReply.model_validate(stream).stream == []
        code, health = await ep.call(method, "health")
        assert code == 200
        assert HealthReply.model_validate(health).jobs.completed == 1


async def test_unknown_job_id_is_a_404_on_every_job_route(endpoint_factory):
    ep = await endpoint_factory("echo_async.py")
    for method, op in [
        ("GET", "status"),
        ("POST", "status"),
        ("GET", "status-sync"),
        ("GET", "stream"),
        ("POST", "cancel"),
        ("POST", "retry"),
    ]:
        code, body = await ep.call(method, f"{op}/no-such-job")
        assert code == 404, (method, op)
        assert "no-such-job" in body["error"]


# --- the queue, timings and progress -------------------------------------------------------------------------


async def test_concurrency_one_keeps_the_second_job_queued_until_the_first_finishes(endpoint_factory, gate_file):
    ep = await endpoint_factory("ep_gate.py")
    g = gate_file("a")
    _, a = await ep.post("run", {"input": {"wait_for": g, "tag": "a"}})
    running = job_reply(await ep.wait_status(a["id"], "IN_PROGRESS"))
    # Started: delayTime is known, executionTime is not.
    assert running.delayTime is not None and running.executionTime is None
    _, b = await ep.post("run", {"input": {"tag": "b"}})
    for _ in range(10):
        _, st = await ep.get(f"status/{b['id']}")
        queued = job_reply(st)
        assert queued.status is JobStatus.IN_QUEUE
        assert queued.delayTime is None and queued.executionTime is None and queued.workerId is None
        await asyncio.sleep(0.03)
    _, health = await ep.get("health")
    h = HealthReply.model_validate(health)
    assert (h.jobs.inProgress, h.jobs.inQueue) == (1, 1)
    assert (h.workers.running, h.workers.idle) == (1, 0)

    release(g)
    done_a = job_reply(await ep.wait_status(a["id"], "COMPLETED"))
    done_b = job_reply(await ep.wait_status(b["id"], "COMPLETED"))
    assert (done_a.output, done_b.output) == ({"tag": "a"}, {"tag": "b"})
    # b started only once a had ended: its start is at or after a's end (times from /requests' createdAt).
    _, reqs = await ep.get("requests")
    created = {row["id"]: row["createdAt"] for row in reqs["requests"]}
    assert done_a.delayTime is not None and done_a.executionTime is not None and done_b.delayTime is not None
    a_end = created[a["id"]] + done_a.delayTime + done_a.executionTime
    b_start = created[b["id"]] + done_b.delayTime
    assert b_start >= a_end


async def test_progress_shows_as_status_output_while_the_job_runs(endpoint_factory, gate_file):
    ep = await endpoint_factory("ep_gate.py")
    g = gate_file("a")
    _, body = await ep.post("run", {"input": {"wait_for": g, "progress": {"step": 1, "of": 3}, "tag": "end"}})

    async def progress_visible() -> dict[str, Any] | None:
        _, st = await ep.get(f"status/{body['id']}")
        return st if st.get("output") is not None else None

    st = job_reply(await until(progress_visible))
    assert st.status is JobStatus.IN_PROGRESS
    assert st.output == {"step": 1, "of": 3}
    release(g)
    done = job_reply(await ep.wait_status(body["id"], "COMPLETED"))
    assert done.output == {"tag": "end"}


# --- purge-queue, health, requests ---------------------------------------------------------------------------


async def test_purge_queue_removes_only_queued_jobs(endpoint_factory, gate_file):
    ep = await endpoint_factory("ep_gate.py")
    g = gate_file("a")
    _, running = await ep.post("run", {"input": {"wait_for": g, "tag": "kept"}})
    await ep.wait_status(running["id"], "IN_PROGRESS")
    queued = [(await ep.post("run", {"input": {"tag": i}}))[1]["id"] for i in range(3)]
    code, body = await ep.post("purge-queue")
    assert code == 200
    assert body == {"removed": 3, "status": "completed"}
    PurgeReply.model_validate(body)
    for job_id in queued:
        assert (await ep.get(f"status/{job_id}"))[0] == 404
    _, health = await ep.get("health")
    assert health["jobs"]["inQueue"] == 0 and health["jobs"]["inProgress"] == 1
    release(g)
    assert (await ep.wait_status(running["id"], "COMPLETED"))["output"] == {"tag": "kept"}
    assert (await ep.post("purge-queue"))[1] == {"removed": 0, "status": "completed"}


async def test_health_counts_jobs_by_status_and_failed_includes_timed_out(endpoint_factory, gate_file, tmp_path):
    ep = await endpoint_factory("ep_gate.py", worker=WorkerConfig(drain_timeout_s=0.2))
    g = gate_file("a")
    _, health = await ep.get("health")
    h0 = HealthReply.model_validate(health)
    assert h0.jobs.model_dump() == {"completed": 0, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0}
    assert (h0.workers.idle, h0.workers.running, h0.workers.initializing) == (1, 0, 0)

    assert (await ep.post("runsync", {"input": {"tag": "ok"}}))[1]["status"] == "COMPLETED"
    failed = await ep.post("runsync", {"input": {"fail_unless": str(tmp_path / "absent")}})
    assert failed[1]["status"] == "FAILED"
    timed = await ep.post("runsync", {"input": {"wait_for": g}, "policy": {"executionTimeout": 100}})
    assert timed[1]["status"] == "TIMED_OUT"
    _, cancelled = await ep.post("run", {"input": {"wait_for": g}})
    await ep.wait_status(cancelled["id"], "IN_PROGRESS")
    await ep.post(f"cancel/{cancelled['id']}")
    _, running = await ep.post("run", {"input": {"wait_for": g}})
    await ep.wait_status(running["id"], "IN_PROGRESS")
    await ep.post("run", {"input": {}})
    await ep.post("run", {"input": {}})

    _, health = await ep.get("health")
    h = HealthReply.model_validate(health)
    assert h.jobs.model_dump() == {"completed": 1, "failed": 2, "inProgress": 1, "inQueue": 2, "retried": 0}
    assert (h.workers.idle, h.workers.running) == (0, 1)
    release(g)


async def test_health_counts_a_lapsed_remote_lease_as_retried(endpoint_factory):
    # No handler: a pure queue. A remote worker takes the job over HTTP and then goes silent.
    ep = await endpoint_factory(None, broker=BrokerConfig(lease_ms=300, tick_s=0.02))
    _, body = await ep.post("run", {"input": {"k": 1}})
    code, taken = await ep.get("job-take/ghost?job_in_progress=0")
    assert code == 200 and taken["id"] == body["id"]
    _, health = await ep.get("health")
    assert health["jobs"]["inProgress"] == 1 and health["workers"]["running"] == 1

    async def requeued() -> dict[str, Any] | None:
        _, h = await ep.get("health")
        return h if h["jobs"]["retried"] == 1 else None

    h = await until(requeued)
    assert h["jobs"]["inQueue"] == 1 and h["jobs"]["inProgress"] == 0
    assert h["workers"] == {"idle": 0, "running": 0, "initializing": 0}
    st = job_reply((await ep.get(f"status/{body['id']}"))[1])
    assert st.status is JobStatus.IN_QUEUE and st.retries == 1


async def test_requests_lists_jobs_newest_first_with_paging_and_a_status_filter(endpoint_factory, tmp_path):
    ep = await endpoint_factory("ep_gate.py")
    ids = []
    for i in range(5):
        inp: dict[str, Any] = {"tag": i}
        if i == 2:
            inp["fail_unless"] = str(tmp_path / "absent")
        _, body = await ep.post("runsync", {"input": inp})
        ids.append(body["id"])

    code, body = await ep.get("requests")
    assert code == 200
    reply = RequestsReply.model_validate(body)
    assert [r.id for r in reply.requests] == ids[::-1]
    assert reply.total == 5
    created = [r.createdAt for r in reply.requests]
    assert created == sorted(created, reverse=True)
    for row in body["requests"]:
        assert set(row) <= {"id", "status", "createdAt", "delayTime", "executionTime"}
        assert row["delayTime"] >= 0 and row["executionTime"] >= 0

    _, page = await ep.get("requests?limit=2&offset=1")
    assert [r["id"] for r in page["requests"]] == ids[::-1][1:3]
    assert (page["limit"], page["offset"], page["total"]) == (2, 1, 5)

    _, failed = await ep.get("requests?status=FAILED")
    assert [r["id"] for r in failed["requests"]] == [ids[2]]
    assert failed["requests"][0]["status"] == "FAILED" and failed["total"] == 1
    _, done = await ep.get("requests?status=COMPLETED")
    assert [r["id"] for r in done["requests"]] == [i for i in ids[::-1] if i != ids[2]]

    code, bad = await ep.get("requests?status=BOGUS")
    assert code == 400 and "BOGUS" in bad["error"]
