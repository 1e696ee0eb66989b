"""The bound on retained jobs (archive.py) with a real SQLite journal: whatever the order of submits, ends, /retry,
lowered retentions and ticks, the bytes counted are exactly those of the finished records in memory and stay under
the bound, and every finished job answers /status as it ended (from memory or from disk) until its retention
ends, and not after."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handler_sdk.errors import NotFound
from handler_sdk.models import JobStatus, RunRequest
from handler_sdk.serve.state.broker import Broker, BrokerConfig
from handler_sdk.serve.state.finished import held_bytes
from handler_sdk.serve.state.local import LocalState
from handler_sdk.serve.state.store import JobStore

S = JobStatus
RUN_MS, SYNC_MS = 5000, 2000
BOUND = 1200  # about six compact records

ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.booleans(), st.integers(1, 4)),
        st.tuples(st.just("finish"), st.sampled_from([S.COMPLETED, S.FAILED]), st.integers(1, 8)),
        st.tuples(st.just("retry"), st.integers(0, 80)),
        st.tuples(st.just("ttl"), st.integers(0, 80), st.integers(0, 6000)),
        st.tuples(st.just("tick"), st.integers(0, 1500)),
        st.tuples(st.just("flush")),
    ),
    max_size=50,
)


def _check_bytes(b: Broker) -> None:
    held = sum(held_bytes(k, v) for k, v in b.jobs.items() if v.status.terminal)
    assert b.retained.bytes == held
    assert held <= BOUND


async def _check_reads(state: LocalState, model: dict[str, dict[str, Any]], now: int, *, ticked: bool) -> None:
    """Every finished job reads back as it ended while retained, and (once a tick has passed its expiry) not after."""
    for job_id, m in model.items():
        if m["expires"] is None:
            continue
        if m["expires"] > now:
            r = await state.status(job_id)
            assert r.status is m["status"] and r.output == m["output"], job_id
        elif ticked:
            with pytest.raises(NotFound):
                await state.status(job_id)


async def _run(steps: list[tuple[Any, ...]], path: Path) -> None:  # noqa: C901 - a branch per operation
    now = [1_000_000]
    cfg = BrokerConfig(run_retention_ms=RUN_MS, sync_retention_ms=SYNC_MS, max_retained_bytes=BOUND)
    b = Broker(JobStore(path, linger_s=0), cfg, clock=lambda: now[0])
    state = LocalState(b)
    await state.open()
    ids: list[str] = []
    model: dict[str, dict[str, Any]] = {}
    try:
        for step in steps:
            kind = step[0]
            if kind == "submit":
                for _ in range(step[2]):
                    req = RunRequest.model_validate({"input": {"i": len(ids)}})
                    r, _ = await state.submit(req, sync=step[1])
                    ids.append(r.id)
                    model[r.id] = {"status": S.IN_QUEUE, "output": None, "expires": None}
            elif kind == "finish":
                leases = await state.take("w", 100, 0)
                for lease in leases[: step[2]]:
                    out = b'{"i":%d}' % ids.index(lease.id)
                    error = "E: x" if step[1] is S.FAILED else None
                    await state.done("w", lease.id, step[1], output=out, error=error)
                    expires = (await state.status(lease.id)).expires  # from memory or disk: it may be evicted at once
                    model[lease.id] = {"status": step[1], "output": out, "expires": expires}
                await state.hand_back("w", [lease.id for lease in leases[step[2] :]])
            elif kind == "retry" and ids:
                job_id = ids[step[1] % len(ids)]
                m = model[job_id]
                if m["status"] is S.FAILED and m["expires"] is not None and m["expires"] > now[0]:
                    await state.retry(job_id)  # from memory or from disk
                    model[job_id] = {"status": S.IN_QUEUE, "output": None, "expires": None}
            elif kind == "ttl" and ids:
                job_id = ids[step[1] % len(ids)]
                m = model[job_id]
                if m["expires"] is not None and m["expires"] > now[0]:
                    r = await state.status(job_id, ttl=step[2])
                    m["expires"] = r.expires
            elif kind == "tick":
                now[0] += step[1]
                b.expire_due()
                for job_id in [j for j, m in model.items() if m["expires"] is not None and m["expires"] <= now[0]]:
                    await _check_reads(state, {job_id: model[job_id]}, now[0], ticked=True)
                    del model[job_id]
                    ids.remove(job_id)
            elif kind == "flush":
                await state.flush()
            _check_bytes(b)
            await _check_reads(state, model, now[0], ticked=False)
    finally:
        await state.close()


@settings(max_examples=60, deadline=None)
@given(ops)
async def test_finished_jobs_read_back_for_their_whole_retention_whatever_the_bound_evicts(
    steps: list[tuple[Any, ...]],
) -> None:
    with tempfile.TemporaryDirectory() as d:
        await _run(steps, Path(d) / "jobs.db")


async def test_evicted_jobs_are_in_the_journal_and_swept_at_their_expiry(tmp_path: Path) -> None:
    now = [1_000_000]
    cfg = BrokerConfig(run_retention_ms=SYNC_MS, sync_retention_ms=SYNC_MS, max_retained_bytes=BOUND)
    b = Broker(JobStore(tmp_path / "jobs.db", linger_s=0), cfg, clock=lambda: now[0])
    state = LocalState(b)
    await state.open()
    try:
        ids = []
        for i in range(40):
            r, _ = await state.submit(RunRequest.model_validate({"input": {"i": i}}), sync=i % 2 == 0)
            ids.append(r.id)
        for lease in await state.take("w", 100, 0):
            await state.done("w", lease.id, S.COMPLETED, output=b"1")
        await state.flush()
        assert b.retained.evicted > 0 and ids[0] not in b.jobs and ids[1] not in b.jobs
        assert (await state.status(ids[0])).output == b"1"  # a /runsync job, read from the journal
        assert (await state.status(ids[1])).output == b"1"  # a /run job
        assert b.counts[S.COMPLETED] == 40  # on disk or not, every retained job is counted
        now[0] += SYNC_MS + 1000
        b.expire_due()
        await state.flush()
        assert b.counts[S.COMPLETED] == 0 and not b.jobs
        assert b.store is not None and b.store._conn is not None
        assert b.store._conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0  # swept through the index
    finally:
        await state.close()
