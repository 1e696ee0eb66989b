"""The real runpod-python 1.12 worker (``runpod.serverless.start``) pulling jobs from ``serve``.

Serve runs in-process as a pure queue (no handler of its own); the runpod worker runs from the peer interpreter
with the platform's RUNPOD_WEBHOOK_* env pointed at it and the bare API key, exactly as on the hosted platform.
Jobs go in through the client API (/run) and are observed through it; one race test also watches the broker
to time its cancel.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from handler_sdk.serve.state.broker import BrokerConfig

pytestmark = pytest.mark.peers

KEY = "peer-worker-key"
# Our holds are 0.5 s in tests (<= 5 s in production); the runpod worker waits for its held polls, so this is a
# liveness bound with plenty of slack, not a speed claim.
EXIT_WITHIN_S = 20


async def queue(endpoint_factory: Any, **kw: Any) -> Any:
    return await endpoint_factory(None, api_key=KEY, **kw)


async def submit(ep: Any, job_input: dict[str, Any], **extra: Any) -> str:
    code, body = await ep.post("run", {"input": job_input, **extra})
    assert code == 200, body
    return str(body["id"])


async def until(probe: Any, what: str, timeout: float = 30) -> Any:
    """Poll ``await probe()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        got = await probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s")
        await asyncio.sleep(0.05)


async def health(ep: Any) -> dict[str, Any]:
    code, body = await ep.get("health")
    assert code == 200
    return dict(body)


async def read_stream(ep: Any, job_id: str) -> list[dict[str, Any]]:
    code, body = await ep.get(f"stream/{job_id}?from=0")
    assert code == 200
    return list(body["stream"])


async def assert_exits_on_sigterm(worker: Any) -> None:
    rc, took = await worker.stop(EXIT_WITHIN_S)
    assert rc == 0, f"runpod worker did not exit cleanly on SIGTERM (rc={rc}, {took:.1f}s):\n{worker.output()}"


async def test_plain_handler_result_completes_the_job(endpoint_factory, runpod_worker):
    ep = await queue(endpoint_factory)
    w = await runpod_worker(ep, "worker_plain.py")
    job_id = await submit(ep, {"mode": "echo", "prompt": "hi"})
    body = await ep.wait_status(job_id, "COMPLETED", "FAILED", timeout=30)
    assert body["status"] == "COMPLETED", body
    assert body["output"] == {"echo": {"mode": "echo", "prompt": "hi"}, "id": job_id}
    assert body["workerId"] == w.pod_id
    assert "error" not in body
    await assert_exits_on_sigterm(w)


async def test_raising_handler_fails_the_job_with_runpods_error_parsed(endpoint_factory, runpod_worker):
    # runpod posts {"error": "<JSON string>"} with error_type "<class 'ValueError'>".
    ep = await queue(endpoint_factory)
    w = await runpod_worker(ep, "worker_plain.py")
    job_id = await submit(ep, {"mode": "raise", "why": "bad input"})
    body = await ep.wait_status(job_id, "COMPLETED", "FAILED", timeout=30)
    assert body["status"] == "FAILED", body
    assert body["error"] == "ValueError: boom: bad input"
    details = body["errorDetails"]
    assert details["error_type"] == "ValueError"
    assert details["error_message"] == "boom: bad input"
    assert details["error_traceback"].startswith("Traceback (most recent call last)")
    assert "ValueError: boom: bad input" in details["error_traceback"]
    assert details["worker_id"] == w.pod_id
    assert "output" not in body
    await assert_exits_on_sigterm(w)


async def test_aggregated_generator_streams_items_while_running_and_ends_with_their_list(
    endpoint_factory, runpod_worker
):
    ep = await queue(endpoint_factory)
    w = await runpod_worker(ep, "worker_gen.py", env={"PEER_AGGREGATE": "1"})
    job_id = await submit(ep, {"n": 3, "gap": 0.7})
    seen: list[Any] = []

    async def first_item_while_running() -> bool:
        code, body = await ep.get(f"stream/{job_id}")  # the job's cursor: only new items
        assert code == 200
        seen.extend(it["output"] for it in body["stream"])
        return bool(seen) and body["status"] == "IN_PROGRESS"

    await until(first_item_while_running, "no stream item while the job ran")
    body = await ep.wait_status(job_id, "COMPLETED", "FAILED", timeout=30)
    assert body["status"] == "COMPLETED", body
    assert body["output"] == [{"i": 0}, {"i": 1}, {"i": 2}]
    code, rest = await ep.get(f"stream/{job_id}")
    assert code == 200
    seen.extend(it["output"] for it in rest["stream"])
    assert seen == [{"i": 0}, {"i": 1}, {"i": 2}]
    items = await read_stream(ep, job_id)
    assert [it["metrics"]["stream_index"] for it in items] == [0, 1, 2]
    await assert_exits_on_sigterm(w)


async def test_generator_without_aggregate_completes_with_no_output(endpoint_factory, runpod_worker):
    # runpod ends every generator job with job-done {"output": []}; without aggregation that is no output at all.
    ep = await queue(endpoint_factory)
    w = await runpod_worker(ep, "worker_gen.py")
    job_id = await submit(ep, {"n": 3})
    body = await ep.wait_status(job_id, "COMPLETED", "FAILED", timeout=30)
    assert body["status"] == "COMPLETED", body
    assert "output" not in body
    assert [it["output"] for it in await read_stream(ep, job_id)] == [{"i": 0}, {"i": 1}, {"i": 2}]
    await assert_exits_on_sigterm(w)


async def test_generator_that_raises_fails_and_keeps_the_items_it_streamed(endpoint_factory, runpod_worker):
    # runpod reports a generator's exception as the plain string "handler: msg \ntraceback: ...".
    ep = await queue(endpoint_factory)
    w = await runpod_worker(ep, "worker_gen.py")
    job_id = await submit(ep, {"n": 5, "raise_at": 2})
    body = await ep.wait_status(job_id, "COMPLETED", "FAILED", timeout=30)
    assert body["status"] == "FAILED", body
    assert body["error"] == "HandlerError: generator broke at 2"
    assert body["errorDetails"]["error_message"] == "generator broke at 2"
    assert "RuntimeError: generator broke at 2" in body["errorDetails"]["error_traceback"]
    assert [it["output"] for it in await read_stream(ep, job_id)] == [{"i": 0}, {"i": 1}]
    await assert_exits_on_sigterm(w)


async def test_progress_update_shows_in_status_while_the_job_runs(endpoint_factory, runpod_worker, release):
    ep = await queue(endpoint_factory)
    w = await runpod_worker(ep, "worker_plain.py")
    path, go = release("progress")
    job_id = await submit(ep, {"mode": "progress", "release": path})

    async def progress_visible() -> dict[str, Any] | None:
        _, body = await ep.get(f"status/{job_id}")
        return body if body["status"] == "IN_PROGRESS" and "output" in body else None

    body = await until(progress_visible, "progress_update never showed in /status")
    assert body["output"] == {"step": 1, "of": 2}
    go.touch()
    body = await ep.wait_status(job_id, "COMPLETED", "FAILED", timeout=30)
    assert body["status"] == "COMPLETED"
    assert body["output"] == {"step": 2, "of": 2}
    # progress_update posts from its own thread, so it may land after the final result: it must not replace it.
    racy = [await submit(ep, {"mode": "racy_progress"}) for _ in range(3)]
    for job_id in racy:
        assert (await ep.wait_status(job_id, "COMPLETED", "FAILED", timeout=30))["output"] == {"final": True}
    await assert_exits_on_sigterm(w)  # a progress post still in flight has landed, or died with the worker
    for job_id in racy:
        code, body = await ep.get(f"status/{job_id}")
        assert code == 200
        assert (body["status"], body["output"]) == ("COMPLETED", {"final": True})


async def test_pings_keep_the_lease_while_a_blocking_handler_runs(endpoint_factory, runpod_worker):
    # The handler blocks the worker's event loop past the lease, so no take, stop or result request goes out:
    # only runpod's separate ping process can keep the job from being requeued as lost. /health shows the
    # worker idle, then running, from those pings.
    ep = await queue(endpoint_factory, broker=BrokerConfig(lease_ms=3000))
    w = await runpod_worker(ep, "worker_plain.py", ping_ms=1000)

    async def idle() -> bool:
        return (await health(ep))["workers"] == {"idle": 1, "running": 0, "initializing": 0}

    await until(idle, "the runpod worker never showed as idle in /health")
    job_id = await submit(ep, {"mode": "block", "seconds": 5})
    await ep.wait_status(job_id, "IN_PROGRESS", timeout=30)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:  # the whole time the loop is blocked, and past the 3 s lease
        h = await health(ep)
        assert h["workers"]["running"] == 1, h
        assert h["jobs"]["retried"] == 0, h
        await asyncio.sleep(0.2)
    body = await ep.wait_status(job_id, "COMPLETED", "FAILED", timeout=30)
    assert body["status"] == "COMPLETED", body
    assert body["output"] == {"blocked": 5}
    assert "retries" not in body
    await until(idle, "the runpod worker never went back to idle")
    await assert_exits_on_sigterm(w)


async def test_cancel_reaches_the_running_worker_and_its_late_result_is_refused(
    endpoint_factory, runpod_worker, tmp_path: Path
):
    ep = await queue(endpoint_factory)
    w = await runpod_worker(ep, "worker_plain.py")
    marker = tmp_path / "stopped"
    # The handler swallows the stop and returns anyway: runpod then posts that result to job-done.
    job_id = await submit(ep, {"mode": "hang", "marker": str(marker), "late": True})
    await ep.wait_status(job_id, "IN_PROGRESS", timeout=30)
    code, body = await ep.post(f"cancel/{job_id}")
    assert (code, body) == (200, {"id": job_id, "status": "CANCELLED"})

    async def stopped() -> bool:
        return marker.exists()

    async def late_result_refused() -> bool:
        return "Failed to return job results. | 409" in w.output()

    await until(stopped, "the cancel never reached the runpod worker's task (job-stop)")
    await until(late_result_refused, "the late job-done was not refused with 409")
    body = await ep.wait_status(job_id, "CANCELLED")
    assert "output" not in body
    # The worker carries on with the next job.
    next_id = await submit(ep, {"mode": "echo"})
    body = await ep.wait_status(next_id, "COMPLETED", "FAILED", timeout=30)
    assert body["status"] == "COMPLETED"
    assert (await health(ep))["jobs"] == {"completed": 1, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0}
    await assert_exits_on_sigterm(w)


async def test_sigterm_during_a_job_lets_it_finish_and_report(endpoint_factory, runpod_worker):
    ep = await queue(endpoint_factory)
    w = await runpod_worker(ep, "worker_plain.py")
    job_id = await submit(ep, {"mode": "block", "seconds": 2})
    await ep.wait_status(job_id, "IN_PROGRESS", timeout=30)
    await assert_exits_on_sigterm(w)
    body = await ep.wait_status(job_id, "COMPLETED", "FAILED")
    assert body["status"] == "COMPLETED", body
    assert body["output"] == {"blocked": 2}


async def test_a_cancel_that_lands_as_the_job_is_taken_still_stops_it(endpoint_factory, runpod_worker, tmp_path):
    # runpod ignores a stop for a job whose task it has not created yet; its pings keep listing the job, and
    # serve must repeat the stop until the worker lets go.
    ep = await queue(endpoint_factory)
    w = await runpod_worker(ep, "worker_plain.py")

    async def idle() -> bool:
        return (await health(ep))["workers"]["idle"] == 1

    await until(idle, "the runpod worker never showed as idle in /health")
    marker = tmp_path / "stopped"
    job_id = await submit(ep, {"mode": "hang", "marker": str(marker)})
    r = ep.broker.jobs[job_id]
    for _ in range(100_000):  # cancel the moment the held take leases it, before the reply reaches the worker
        if r.status.value != "IN_QUEUE":
            break
        await asyncio.sleep(0)
    code, body = await ep.post(f"cancel/{job_id}")
    assert (code, body["status"]) == (200, "CANCELLED")

    async def stopped() -> bool:
        return marker.exists()

    await until(stopped, "the cancel never reached the runpod worker's task")
    await assert_exits_on_sigterm(w)


async def test_execution_timeout_ends_the_job_timed_out_and_stops_the_handler(
    endpoint_factory, runpod_worker, tmp_path
):
    # The runpod worker knows nothing of policy.executionTimeout: serve's backstop times the job out and stops it.
    ep = await queue(endpoint_factory, broker=BrokerConfig(execution_grace_ms=0))
    w = await runpod_worker(ep, "worker_plain.py")
    marker = tmp_path / "stopped"
    job_id = await submit(ep, {"mode": "hang", "marker": str(marker)}, policy={"executionTimeout": 1500})
    body = await ep.wait_status(job_id, "TIMED_OUT", "COMPLETED", "FAILED", timeout=30)
    assert body["status"] == "TIMED_OUT", body
    assert body["error"] == "TimeoutError: job exceeded its executionTimeout of 1500 ms"

    async def stopped() -> bool:
        return marker.exists()

    await until(stopped, "the timed-out job was never stopped on the runpod worker")
    await assert_exits_on_sigterm(w)


async def test_concurrency_modifier_takes_batches_and_runs_them_at_once(endpoint_factory, runpod_worker):
    # Above concurrency 1 the runpod worker switches to job-take-batch?batch_size=N and expects a JSON list.
    ep = await queue(endpoint_factory)
    ids = [await submit(ep, {"mode": "sleep", "seconds": 1.5}) for _ in range(3)]
    w = await runpod_worker(ep, "worker_plain.py", env={"PEER_CONCURRENCY": "3"})

    async def all_running() -> bool:
        h = await health(ep)
        return h["jobs"]["inProgress"] == 3 and h["workers"]["running"] == 1

    await until(all_running, "the three jobs never ran at once")
    for job_id in ids:
        body = await ep.wait_status(job_id, "COMPLETED", "FAILED", timeout=30)
        assert (body["status"], body["output"]) == ("COMPLETED", {"slept": 1.5})
    await assert_exits_on_sigterm(w)
