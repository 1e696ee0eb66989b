"""Big outputs in the SQLite journal: a finished job's output over the bound is written once, to a table of its
own, so the expiry its row gets when the retention bound moves it out of memory leaves the output alone; it reads
back whole (/status past the bound, restart); it goes with its job (sweep, /retry); a running job's progress stays
in its row; and at no point does a side row outlive its use or a row lose its output."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from handler_sdk.models import JobStatus, RunRequest
from handler_sdk.serve.state.broker import Broker
from handler_sdk.serve.state.journal_rows import INLINE_OUTPUT
from handler_sdk.serve.state.local import LocalState
from tests import test_store
from tests.test_store import _cfg, _past_retention, _restart

S = JobStatus
BIG = b'"' + b"x" * 100_000 + b'"'


async def _broker(path: Path, now: list[int], **cfg: Any) -> Broker:
    return await test_store._broker(path, now, linger_s=0, **cfg)


def _conn(b: Broker) -> sqlite3.Connection:
    assert b.store is not None and b.store._conn is not None
    return b.store._conn


def _row_output(b: Broker, job_id: str) -> bytes | None:
    (out,) = _conn(b).execute("SELECT output FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if out is None else bytes(out)


def _side_outputs(b: Broker) -> dict[str, bytes]:
    return {i: bytes(v) for i, v in _conn(b).execute("SELECT id, output FROM outputs")}


def _submit(b: Broker) -> str:
    return b.submit(RunRequest.model_validate({"input": {"prompt": "a cat"}})).id


async def _finish(
    b: Broker, job_id: str, output: bytes | None, status: JobStatus = S.COMPLETED, *, progress: bytes | None = None
) -> None:
    (lease,) = await b.take("w1", 1)
    assert lease.id == job_id
    if progress is not None:  # written with the running job's row, before its result
        b.progress("w1", job_id, progress)
        await b.durable()
        assert _row_output(b, job_id) == progress
    b.done("w1", job_id, status, output=output, error=None if status is S.COMPLETED else "E: x")
    await b.durable()


async def test_an_evicted_big_output_is_not_written_again_with_its_expiry(tmp_path: Path) -> None:
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now, max_retained_bytes=0)
    state = LocalState(b)
    try:
        job = _submit(b)
        await _finish(b, job, BIG)
        await b.durable()  # the expiry, written as the bound moved the record out of memory
        assert job not in b.jobs
        expires = _conn(b).execute("SELECT expires FROM jobs WHERE id = ?", (job,)).fetchone()[0]
        assert expires == 1_000 + _cfg().run_retention_ms
        # The row that the result and then the expiry rewrote holds no output: neither wrote the 100 kB in it.
        assert _row_output(b, job) == b"" and _side_outputs(b) == {job: BIG}
        assert (await state.status(job)).output == BIG  # /status past the bound reads it back whole
        await _past_retention(b, now)
        # The sweep (a DELETE through the expires index) takes the side row with it.
        assert _side_outputs(b) == {} and _conn(b).execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
    finally:
        assert b.store is not None
        await b.store.close()


async def test_a_big_output_reads_back_after_a_restart_and_goes_with_its_expired_job(tmp_path: Path) -> None:
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now)
    job = _submit(b)
    await _finish(b, job, BIG)
    assert _row_output(b, job) == b"" and _side_outputs(b) == {job: BIG}
    b = await _restart(b, now)
    try:
        assert b.status(job).output == BIG and b.status(job).status is S.COMPLETED
        await _past_retention(b, now)  # in memory: the broker deletes its row (a DELETE by id)
        assert _side_outputs(b) == {} and _conn(b).execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
    finally:
        assert b.store is not None
        await b.store.close()


async def test_a_running_jobs_big_progress_stays_in_its_row(tmp_path: Path) -> None:
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now)
    try:
        # One job's row is on disk before its progress (an update writes it), the other's is not yet (its insert
        # carries the running job).
        written = _submit(b)
        await b.durable()
        unwritten = _submit(b)
        await b.take("w1", 2)
        for job in (written, unwritten):
            b.progress("w1", job, BIG)
        await b.durable()
        for job in (written, unwritten):
            assert _row_output(b, job) == BIG
        assert _side_outputs(b) == {}
        for job in (written, unwritten):
            b.done("w1", job, S.COMPLETED, output=b'"done"')
        await b.durable()
        assert _row_output(b, written) == _row_output(b, unwritten) == b'"done"' and _side_outputs(b) == {}
    finally:
        assert b.store is not None
        await b.store.close()


async def test_a_retry_drops_the_side_output_and_the_next_result_writes_its_own(tmp_path: Path) -> None:
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now)
    try:
        job = _submit(b)
        await _finish(b, job, BIG, S.FAILED)
        assert _side_outputs(b) == {job: BIG}
        b.retry(job)
        await b.durable()
        assert _row_output(b, job) is None and _side_outputs(b) == {}
        await _finish(b, job, BIG + b" ")
        assert _row_output(b, job) == b"" and _side_outputs(b) == {job: BIG + b" "}
        b = await _restart(b, now)
        assert b.status(job).output == BIG + b" "
    finally:
        assert b.store is not None
        await b.store.close()


def _journal(path: Path) -> sqlite3.Connection:
    from handler_sdk.serve.state import journal_rows
    from handler_sdk.serve.state.store import _SCHEMA

    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(_SCHEMA)
    journal_rows.migrate(conn, "ep", None)
    return conn


async def test_a_journal_from_before_the_outputs_table_opens_reads_its_inline_outputs_and_moves_new_ones(
    tmp_path: Path,
) -> None:
    """A journal written by an earlier version: no outputs table or trigger, every output in its row."""
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now)
    old = _submit(b)
    b = await _restart(b, now)
    assert b.store is not None
    await b.store.close()
    conn = sqlite3.connect(tmp_path / "jobs.db")
    conn.executescript("DROP TRIGGER outputs_gone; DROP TABLE outputs;")
    state = b'{"status":"COMPLETED","created":1000,"started":1000,"ended":1000,"retention":10000}'
    conn.execute("UPDATE jobs SET state = ?, output = ?, status = 'COMPLETED' WHERE id = ?", (state, BIG, old))
    conn.commit()
    conn.close()
    b = await _broker(tmp_path / "jobs.db", now)
    try:
        assert b.status(old).output == BIG and _row_output(b, old) == BIG and _side_outputs(b) == {}
        new = _submit(b)
        await _finish(b, new, BIG)
        assert _row_output(b, new) == b"" and _side_outputs(b) == {new: BIG}
        assert b.purge() == 0
        await _past_retention(b, now)  # both expire (in memory): the inline row and the moved one alike
        assert _side_outputs(b) == {} and _conn(b).execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
    finally:
        assert b.store is not None
        await b.store.close()


def test_a_retry_and_a_new_result_in_one_commit_keep_the_new_side_output(tmp_path: Path) -> None:
    """A job retried and finished again before the writer's next commit: that commit holds the retry's reset and
    the new result. The reset deletes the old side row before the new one is written, never after."""
    from handler_sdk.serve.state import journal_rows

    conn = _journal(tmp_path / "j.db")
    state = b'{"status":"FAILED","created":1,"started":1,"ended":2,"retention":10}'
    row = ("job-1", b"null", state, BIG, "ep", "FAILED", None, None)
    journal_rows.write(conn, "ep", ([row], [], [], [], [], [], [], None, []))
    again = (state, BIG + b" ", "FAILED", "job-1")
    journal_rows.write(conn, "ep", ([], [again], [], [], [], ["job-1"], [], None, []))
    r = journal_rows.read_one(conn, "ep", "job-1", stream=False)
    assert r is not None and r.output == BIG + b" "


def test_a_big_output_written_again_keeps_its_side_row_even_with_recursive_triggers(tmp_path: Path) -> None:
    """A failed commit's changes are written again: an INSERT OR REPLACE of an archived /runsync job's row may
    delete the old row (and, with recursive triggers on, fire the trigger) but never the side row written after."""
    from handler_sdk.serve.state import journal_rows

    conn = _journal(tmp_path / "j.db")
    conn.execute("PRAGMA recursive_triggers = ON")
    state = b'{"status":"COMPLETED","created":1,"started":1,"ended":2,"retention":10}'
    row = ("sync-1", b"null", state, BIG, "ep", "COMPLETED", 12, None)
    batch: Any = ([row], [], [], [], [], [], [], None, [])
    journal_rows.write(conn, "ep", batch)
    journal_rows.write(conn, "ep", batch)
    r = journal_rows.read_one(conn, "ep", "sync-1", stream=False)
    assert r is not None and r.output == BIG
    assert conn.execute("SELECT count(*) FROM outputs").fetchone()[0] == 1


async def _check(b: Broker, state: LocalState, job: str, expected: bytes | None) -> None:
    """The output reads back as the last one set, and side rows exist exactly for rows whose output is empty."""
    conn = _conn(b)
    side = {i for (i,) in conn.execute("SELECT id FROM outputs")}
    empty = {i for (i,) in conn.execute("SELECT id FROM jobs WHERE output = X''")}
    assert side == empty
    assert (await state.status(job)).output == expected


@settings(max_examples=30, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(-4, 4), st.booleans(), st.booleans(), st.sampled_from([None, b'"p"', BIG])),
        min_size=1,
        max_size=4,
    ),
    bound=st.sampled_from([0, 1 << 30]),
)
def test_outputs_on_both_sides_of_the_bound_read_back_through_progress_retries_restarts_and_eviction(
    steps: list[tuple[int, bool, bool, bytes | None]], bound: int
) -> None:
    # b'"..."' with n characters is n + 2 bytes: sizes on both sides of INLINE_OUTPUT, or a 100 kB one.
    async def go(path: Path) -> None:
        now = [1_000]
        b = await _broker(path, now, max_retained_bytes=bound)
        job = _submit(b)
        try:
            for extra, huge, restart, progress in steps:
                out = BIG if huge else b'"' + b"y" * (INLINE_OUTPUT - 2 + extra) + b'"'
                await _finish(b, job, out, S.FAILED, progress=progress)
                await b.durable()
                assert (_row_output(b, job) == out) is (len(out) <= INLINE_OUTPUT)
                await _check(b, LocalState(b), job, out)
                if restart:
                    b = await _restart(b, now)
                    await _check(b, LocalState(b), job, out)
                state = LocalState(b)
                await state.retry(job)
                await _check(b, state, job, None)
        finally:
            assert b.store is not None
            await b.store.close()

    with tempfile.TemporaryDirectory() as d:
        asyncio.run(go(Path(d) / "jobs.db"))
