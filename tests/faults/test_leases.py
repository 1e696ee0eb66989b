"""Faults 2 and 3: a job whose worker dies mid-stream, and a worker that comes back under the same id.

A re-leased job used to keep the dead worker's stream items and append the new attempt's, all with one
contiguous stream_index, so a client could not tell; and a worker restarted under its old id (``serve --workers``,
a platform container's pod id) renewed the leases of jobs it no longer ran, which stayed IN_PROGRESS for good.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from handler_sdk.models import JobStatus, RunRequest
from handler_sdk.serve.state.broker import Broker, BrokerConfig

from .tools import HANDLERS, call, start_serve, start_worker, until

STREAM = str(HANDLERS) + ":stream"


async def stream_items(http, url, job_id):
    _, body, _ = await call(http, "GET", f"{url}/stream/{job_id}?from=0")
    return body["stream"]


def check_attempts(items, n):
    """Every item read stays; stream_index counts on; metrics.attempt marks where the next attempt starts."""
    assert [it["metrics"]["stream_index"] for it in items] == list(range(len(items)))
    attempts = [it["metrics"]["attempt"] for it in items]
    assert attempts == sorted(attempts) and attempts[0] == 1 and attempts[-1] >= 2
    last = [it["output"]["i"] for it in items if it["metrics"]["attempt"] == attempts[-1]]
    assert last == list(range(n))  # the attempt that finished streamed everything, in order
    first = [it["output"]["i"] for it in items if it["metrics"]["attempt"] == 1]
    assert first == list(range(len(first))) and 0 < len(first) < n


@pytest.mark.parametrize("same_id", [True, False], ids=["same-id", "new-id"])
async def test_a_worker_killed_mid_stream_leaves_its_items_and_the_next_attempt_is_marked(
    endpoint_factory, tmp_path, same_id
):
    # A long lease: with the same id, only the new process's take (job_in_progress=0) can free the job.
    lease = 60_000 if same_id else 1_500
    ep = await endpoint_factory(None, broker=BrokerConfig(lease_ms=lease))
    _, job, _ = await call(ep.http, "POST", f"{ep.url}/run", {"input": {"n": 30, "delay": 0.05}})
    w1 = start_worker(ep.url, STREAM, tmp_path / "w1.log", "wk")
    try:
        await until(lambda: _count(ep, job["id"], 8), timeout=30, what="8 items from the first worker")
        w1.send_signal(signal.SIGKILL)
        w1.wait(10)
        w2 = start_worker(ep.url, STREAM, tmp_path / "w2.log", "wk" if same_id else "wk-2")
        try:
            await ep.wait_status(job["id"], "COMPLETED", timeout=40)
        finally:
            w2.kill()
            w2.wait(10)
    finally:
        w1.kill()
    check_attempts(await stream_items(ep.http, ep.url, job["id"]), 30)
    _, st, _ = await call(ep.http, "GET", f"{ep.url}/status/{job['id']}")
    assert st["retries"] == 1


async def _count(ep, job_id, n):
    return len(ep.broker.jobs[job_id].stream) >= n


async def test_serve_killed_mid_stream_resumes_the_job_with_the_next_attempt_marked(tmp_path, http):
    data = tmp_path / "data"
    args = ("--data-dir", str(data), "--no-rate-limits")
    s1 = start_serve(tmp_path, *args, target=STREAM, name="s1")
    try:
        _, job, _ = await call(http, "POST", f"{s1.url}/run", {"input": {"n": 20, "delay": 0.1}})
        await until(lambda: _streamed(http, s1.url, job["id"], 5), timeout=20, what="5 items")
        await asyncio.sleep(0.3)  # the items are journaled within the store's linger
    finally:
        s1.kill9()
    s2 = start_serve(tmp_path, *args, target=STREAM, name="s2", port=s1.port)
    try:
        await until(lambda: _status(http, s2.url, job["id"], "COMPLETED"), timeout=30, what="COMPLETED")
        check_attempts(await stream_items(http, s2.url, job["id"]), 20)
    finally:
        s2.kill9()


async def _streamed(http, url, job_id, n):
    return len(await stream_items(http, url, job_id)) >= n


async def _status(http, url, job_id, want):
    _, body, _ = await call(http, "GET", f"{url}/status/{job_id}")
    return body is not None and body.get("status") == want


# --- the broker's rules, at the level of its calls ----------------------------------------------------------


def _broker_with_lease() -> tuple[Broker, str]:
    now = [1_000]
    b = Broker(None, BrokerConfig(lease_ms=60_000), clock=lambda: now[0])
    b._test_now = now  # type: ignore[attr-defined]
    r = b.submit(RunRequest(input={}))
    return b, r.id


async def test_a_take_saying_nothing_in_progress_gives_back_the_jobs_leased_to_that_id():
    b, job_id = _broker_with_lease()
    assert [r.id for r in await b.take("pod", 1, busy=True)] == [job_id]
    taken = await b.take("pod", 1, busy=False)  # a new process under the same id: it runs nothing
    assert [r.id for r in taken] == [job_id]  # lost, queued again at the front, and leased to the new process
    assert b.jobs[job_id].retries == 1 and b.jobs[job_id].attempt == 2 and b.retried == 1


async def test_a_job_missing_from_a_pinging_workers_pings_for_a_whole_interval_queues_again():
    b, job_id = _broker_with_lease()
    now = b._test_now  # type: ignore[attr-defined]
    b.ping("pod", [])
    now[0] += 10
    await b.take("pod", 1)
    now[0] += 10
    b.ping("pod", [])  # leased after the previous ping: a lagging job list gets this one ping of grace
    assert b.jobs[job_id].status is JobStatus.IN_PROGRESS
    now[0] += 10
    b.ping("pod", [job_id])
    now[0] += 10
    b.ping("pod", [])  # missing for a whole interval now
    assert b.jobs[job_id].status is JobStatus.IN_QUEUE and b.jobs[job_id].retries == 1


async def test_the_ping_rule_never_applies_to_a_worker_that_does_not_ping():
    b, job_id = _broker_with_lease()
    now = b._test_now  # type: ignore[attr-defined]
    await b.take("pod", 1)
    for _ in range(5):
        now[0] += 10_000
        await b.take("pod", 1, busy=True)
    assert b.jobs[job_id].status is JobStatus.IN_PROGRESS


async def test_an_openai_stream_whose_worker_is_lost_fails_instead_of_running_again():
    b = Broker(None, BrokerConfig())
    r = b.submit(RunRequest(input={"openai_route": "/v1/chat/completions", "openai_input": {}}), sync=True)
    await b.take("w", 1)
    b.stream("w", r.id, [b'"data: {}\\n\\n"'], [None])
    b.leave("w")
    assert r.status is JobStatus.FAILED and r.error is not None and "WorkerLost" in r.error
