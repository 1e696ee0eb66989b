"""Finished records stay readable for exactly their retention, then go: whatever the order jobs end in, their
kinds (/run, /runsync), /retry of failed ones, a lowered retention (/status?ttl=) or a clock that steps back."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from handler_sdk.models import JobStatus, RunRequest
from handler_sdk.serve.state.broker import Broker, BrokerConfig

RUN_MS, SYNC_MS = 1000, 300

ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.booleans()),
        st.tuples(st.just("finish"), st.sampled_from([JobStatus.COMPLETED, JobStatus.FAILED]), st.integers(0, 50)),
        st.tuples(st.just("retry"), st.integers(0, 50)),
        st.tuples(st.just("ttl"), st.integers(0, 50), st.integers(0, 1200)),
        st.tuples(st.just("tick"), st.integers(-40, 400)),
    ),
    max_size=60,
)


async def _run(steps: list[tuple[Any, ...]]) -> None:  # noqa: C901 - one branch per operation
    now = [1_000_000]
    b = Broker(None, BrokerConfig(run_retention_ms=RUN_MS, sync_retention_ms=SYNC_MS), clock=lambda: now[0])
    ids: list[str] = []
    model: dict[str, int | None] = {}  # job id -> when it expires (None while it has not ended)
    for step in steps:
        kind = step[0]
        if kind == "submit":
            r = b.submit(RunRequest.model_validate({"input": {"i": len(ids)}}), sync=step[1])
            ids.append(r.id)
            model[r.id] = None
        elif kind == "finish" and ids:
            job_id = ids[step[2] % len(ids)]
            taken = await b.take("w", 100)
            for t in taken:
                if t.id == job_id:
                    b.done("w", job_id, step[1], output=b"1")
                else:
                    b.hand_back("w", [t.id])
            if job_id in b.jobs and b.jobs[job_id].status.terminal and model.get(job_id) is None:
                r = b.jobs[job_id]
                model[job_id] = r.ended + r.retention
        elif kind == "retry" and ids:
            job_id = ids[step[1] % len(ids)]
            r = b.jobs.get(job_id)
            if r is not None and r.status is JobStatus.FAILED:
                b.retry(job_id)
                model[job_id] = None
        elif kind == "ttl" and ids:
            job_id = ids[step[1] % len(ids)]
            if job_id in b.jobs:
                r = b.status(job_id, ttl=step[2])
                if r.expires is not None:
                    model[job_id] = r.expires
        elif kind == "tick":
            now[0] += step[1]  # a negative step: the wall clock stepped back
            b.expire_due()
            for job_id, due in model.items():
                present = job_id in b.jobs
                if due is None:
                    assert present or job_id not in ids, job_id
                elif due > now[0]:
                    assert present, f"{job_id} gone before its retention ended ({due} > {now[0]})"
            for job_id, due in list(model.items()):
                if due is not None and due <= now[0]:
                    # Due: gone at the latest by the next tick that passes its time.
                    now_ok = job_id not in b.jobs
                    assert now_ok, f"{job_id} still held {now[0] - due} ms after its retention ended"
                    del model[job_id]
                    ids.remove(job_id)
        if kind in ("submit", "finish") and ids:
            # Every finished record still held reads back as it ended (the compact path keeps it whole).
            for job_id in ids:
                if job_id in b.jobs and b.jobs[job_id].status is JobStatus.COMPLETED:
                    assert b.get(job_id).reply()["output"] is not None


@settings(max_examples=150, deadline=None)
@given(ops)
async def test_finished_records_are_held_for_exactly_their_retention(steps: list[tuple[Any, ...]]) -> None:
    await _run(steps)


async def test_a_completed_run_job_drops_its_input_but_a_failed_one_keeps_it_for_retry() -> None:
    b = Broker(None, BrokerConfig())
    ok = b.submit(RunRequest.model_validate({"input": {"x": 1}}))
    bad = b.submit(RunRequest.model_validate({"input": {"x": 2}}))
    await b.take("w", 2)
    b.done("w", ok.id, JobStatus.COMPLETED, output=b"1")
    b.done("w", bad.id, JobStatus.FAILED, error="boom")
    assert ok.input is None and ok.reply()["output"] is not None
    assert bad.input == {"x": 2}
    b.retry(bad.id)
    [again] = await b.take("w", 1)
    assert again.input == {"x": 2}


async def test_a_retried_jobs_earlier_entry_neither_expires_it_early_nor_holds_back_others() -> None:
    now = [1_000_000]
    b = Broker(None, BrokerConfig(run_retention_ms=RUN_MS), clock=lambda: now[0])
    a = b.submit(RunRequest.model_validate({"input": {"a": 1}}))
    await b.take("w", 1)
    b.done("w", a.id, JobStatus.FAILED, error="boom")  # a's first entry, due at +RUN_MS
    b.retry(a.id)
    await b.take("w", 1)
    other = b.submit(RunRequest.model_validate({"input": {"b": 1}}))
    now[0] += 100
    await b.take("w", 1)
    b.done("w", other.id, JobStatus.COMPLETED, output=b"1")  # due at +100+RUN_MS
    now[0] += 400
    b.done("w", a.id, JobStatus.COMPLETED, output=b"2")  # a again, due at +500+RUN_MS
    now[0] = 1_000_000 + RUN_MS + 100
    b.expire_due()
    assert other.id not in b.jobs  # not held back behind a's stale entry
    assert a.id in b.jobs  # nor a expired by it
    now[0] = 1_000_000 + RUN_MS + 500
    b.expire_due()
    assert a.id not in b.jobs
