"""Batched handlers end to end: through serve's in-process worker, and through a standalone worker process over
HTTP (``python -m handler_sdk.worker`` against a pure-queue serve). Handlers: tests/handlers/batching.py."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import HANDLERS, Endpoint, until

pytestmark = pytest.mark.timeout(60)


async def submit(ep: Endpoint, inp: Any, **extra: Any) -> str:
    code, body = await ep.post("run", {"input": inp, **extra})
    assert code == 200, body
    return str(body["id"])


async def final(ep: Endpoint, job_id: str) -> dict[str, Any]:
    return await ep.wait_status(job_id, "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT", timeout=20)


# --- through serve (the in-process worker) -------------------------------------------------------------------


async def test_jobs_through_serve_run_in_one_batch_each_with_its_own_output_and_times(endpoint_factory: Any) -> None:
    ep = await endpoint_factory("batching.py:echo")
    ids = [await submit(ep, {"i": i}) for i in range(5)]
    bodies = [await final(ep, job_id) for job_id in ids]
    for i, (job_id, body) in enumerate(zip(ids, bodies, strict=True)):
        assert body["status"] == "COMPLETED"
        assert body["output"]["id"] == job_id and body["output"]["input"] == {"i": i}
        assert body["output"]["batch"] == ids  # five jobs, one batch, in the order they were taken
    # IN_PROGRESS from its take: the wait for its batch (400 ms, the batch never filled) is execution time.
    assert bodies[0]["executionTime"] >= 390
    assert all(b["delayTime"] < 390 for b in bodies)


async def test_an_item_failure_fails_its_job_alone_and_a_raise_fails_the_whole_batch(endpoint_factory: Any) -> None:
    ep = await endpoint_factory("batching.py:mixed")
    ok, fail, err, ok2 = [await submit(ep, inp) for inp in ({}, {"fail": "bad one"}, {"err": "no luck"}, {})]
    got = {job_id: await final(ep, job_id) for job_id in (ok, fail, err, ok2)}
    assert got[ok]["status"] == got[ok2]["status"] == "COMPLETED"
    assert got[ok]["output"]["batch"] == [ok, fail, err, ok2]
    assert (got[fail]["status"], got[fail]["error"]) == ("FAILED", "ValueError: bad one")
    assert got[fail]["errorDetails"]["worker_id"] == "local"
    assert (got[err]["status"], got[err]["error"]) == ("FAILED", "HandlerError: no luck")
    ids = [await submit(ep, inp) for inp in ({}, {"raise": "all down"})]
    for job_id in ids:
        body = await final(ep, job_id)
        assert (body["status"], body["error"]) == ("FAILED", "RuntimeError: all down")
        assert "raise RuntimeError" in body["errorDetails"]["error_traceback"]


async def test_one_job_cancelled_and_one_timed_out_in_a_running_batch_end_alone(endpoint_factory: Any) -> None:
    ep = await endpoint_factory("batching.py:slow")
    cancelled = await submit(ep, {"seconds": 1.5})
    timed_out = await submit(ep, {"seconds": 1.5}, policy={"executionTimeout": 300})
    completes = await submit(ep, {"seconds": 1.5})

    async def progressed() -> bool:  # the batch of three is running: each job shows its own progress
        bodies = [(await ep.get(f"status/{j}"))[1] for j in (cancelled, completes)]
        return all(b["status"] == "IN_PROGRESS" and b.get("output") == {"batch_of": 3} for b in bodies)

    await until(progressed)
    code, _ = await ep.post(f"cancel/{cancelled}")
    assert code == 200
    assert (await final(ep, cancelled))["status"] == "CANCELLED"
    body = await final(ep, timed_out)
    assert (body["status"], body.get("output")) == ("TIMED_OUT", None)
    assert body["error"] == "TimeoutError: job exceeded its 0.3 s execution timeout"
    body = await final(ep, completes)
    assert body["status"] == "COMPLETED"
    assert body["output"]["batch"] == [cancelled, timed_out, completes] and body["output"]["cancelled"] is False
    # The others' results were dropped: the cancelled job stays CANCELLED, with no output.
    _, again = await ep.get(f"status/{cancelled}")
    assert again["status"] == "CANCELLED" and again.get("output") is None


async def test_an_invalid_input_fails_alone_and_never_enters_the_batch(endpoint_factory: Any) -> None:
    ep = await endpoint_factory("batching.py:typed")
    good, bad, good2 = [await submit(ep, {"n": n}) for n in (1, "many", 3)]
    body = await final(ep, bad)
    assert body["status"] == "FAILED" and body["error"].startswith("InvalidInput: invalid input: n:")
    assert (await final(ep, good))["output"] == {"double": 2, "batch": 2}
    assert (await final(ep, good2))["output"] == {"double": 6, "batch": 2}


async def test_a_concurrency_modifier_counts_batches_not_jobs(endpoint_factory: Any) -> None:
    ep = await endpoint_factory("batching.py:pairs")
    ids = [await submit(ep, {"i": i}) for i in range(6)]
    bodies = [await final(ep, job_id) for job_id in ids]
    assert [b["output"]["batch"] for b in bodies] == [ids[:3]] * 3 + [ids[3:]] * 3
    assert {b["output"]["peak"] for b in bodies} == {2}  # concurrency 2 (from the modifier): 6 jobs at once


# --- a standalone worker over HTTP -------------------------------------------------------------------------


def worker_env(url: str, tmp: Path) -> dict[str, str]:
    return {
        "HANDLER_SDK_ENDPOINT_URL": url,
        "HANDLER_SDK_WORKER_ID": "wk-b",
        "HANDLER_SDK_PING_INTERVAL_MS": "100",
        "HANDLER_SDK_BACKOFF_BASE_S": "0.05",
        "HANDLER_SDK_SPOOL_DIR": str(tmp / "spool"),
        "HANDLER_SDK_LOG_FORMAT": "plain",
        "RUNPOD_WEBHOOK_GET_JOB": "",
        "RUNPOD_WEBHOOK_POST_OUTPUT": "",
        "RUNPOD_WEBHOOK_POST_STREAM": "",
        "RUNPOD_WEBHOOK_PING": "",
        "RUNPOD_POD_ID": "",
        "RUNPOD_AI_API_KEY": "",
        "RUNPOD_PING_INTERVAL": "",
    }


async def test_a_standalone_worker_fills_a_batch_from_one_take_and_pings_name_the_waiting_jobs(
    endpoint_factory: Any, process_factory: Any, tmp_path: Path
) -> None:
    ep = await endpoint_factory(None, take_hold_s=0.3)
    takes: list[tuple[int, int]] = []
    pinged: list[list[str]] = []
    take, ping = ep.broker.take, ep.broker.ping

    async def recording_take(worker_id: str, n: int, *a: Any, **kw: Any) -> Any:
        got = await take(worker_id, n, *a, **kw)
        takes.append((n, len(got)))
        return got

    def recording_ping(worker_id: str, job_ids: Any, **kw: Any) -> Any:
        pinged.append(list(job_ids))
        return ping(worker_id, job_ids, **kw)

    ep.broker.take, ep.broker.ping = recording_take, recording_ping
    ids = [await submit(ep, {"i": i}) for i in range(6)]
    w = process_factory("-m", "handler_sdk.worker", str(HANDLERS / "batching.py:echo"),
                        env=worker_env(ep.url, tmp_path), name="wk-b")  # fmt: skip
    try:
        # While the batch waits to fill (400 ms), its jobs are IN_PROGRESS, leased, and named in the pings.
        async def named() -> bool:
            return any(sorted(p) == sorted(ids) for p in pinged)

        await until(named, timeout=20)
        assert all([(await ep.get(f"status/{j}"))[1]["status"] == "IN_PROGRESS" for j in ids])
        for job_id in ids:
            body = await final(ep, job_id)
            assert body["status"] == "COMPLETED", w.output()
            assert body["output"]["batch"] == ids and body["output"]["worker"] == "wk-b"
    finally:
        w.proc.terminate()
    # One take asked for a whole batch (concurrency 1 x batch_size 8) and got all six.
    assert (8, 6) in takes and [t for t in takes if t[1]] == [(8, 6)]


async def test_a_cancel_reaches_one_job_of_a_batch_on_a_standalone_worker(
    endpoint_factory: Any, process_factory: Any, tmp_path: Path
) -> None:
    ep = await endpoint_factory(None, take_hold_s=0.3)
    ids = [await submit(ep, {"seconds": 1.5}) for _ in range(3)]
    w = process_factory("-m", "handler_sdk.worker", str(HANDLERS / "batching.py:slow"),
                        env=worker_env(ep.url, tmp_path), name="wk-b")  # fmt: skip
    try:

        async def running() -> bool:
            return all([(await ep.get(f"status/{j}"))[1].get("output") == {"batch_of": 3} for j in ids])

        await until(running, timeout=20)
        assert (await ep.post(f"cancel/{ids[0]}"))[0] == 200
        assert (await final(ep, ids[0]))["status"] == "CANCELLED"
        for job_id in ids[1:]:
            body = await final(ep, job_id)
            assert body["status"] == "COMPLETED", w.output()
            assert body["output"]["batch"] == ids
        assert "Traceback" not in w.output()
    finally:
        w.proc.terminate()


async def test_sigterm_starts_the_batch_waiting_to_fill_and_reports_it_before_exiting(
    endpoint_factory: Any, process_factory: Any, tmp_path: Path
) -> None:
    ep = await endpoint_factory(None, take_hold_s=0.3)
    ids = [await submit(ep, {"seconds": 0}) for _ in range(2)]
    # The batch would wait 2 s for a third job; the drain deadline is 1 s: only starting it at once saves it.
    env = {**worker_env(ep.url, tmp_path), "HANDLER_SDK_DRAIN_TIMEOUT_S": "1"}
    w = process_factory("-m", "handler_sdk.worker", str(HANDLERS / "batching.py:slow"), env=env, name="wk-b")

    async def waiting() -> bool:
        return all([(await ep.get(f"status/{j}"))[1]["status"] == "IN_PROGRESS" for j in ids])

    await until(waiting, timeout=20)
    w.proc.send_signal(signal.SIGTERM)
    for job_id in ids:
        body = await final(ep, job_id)
        assert body["status"] == "COMPLETED", w.output()
        assert body["output"]["batch"] == ids
    await until(lambda: asyncio.sleep(0, w.proc.poll() is not None), timeout=20)
    assert w.proc.returncode == 0, w.output()
