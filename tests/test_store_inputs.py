"""Big inputs in the SQLite journal: written once to a table of their own, so a job's lease and result (which
rewrite its row) leave them alone; read back whole (restart, /retry, /status past the bound); gone with their job;
and rows journaled with their input inline, as before, still read back."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from handler_sdk import codec
from handler_sdk.models import JobStatus, RunRequest
from handler_sdk.serve.state.broker import Broker
from handler_sdk.serve.state.journal_rows import INLINE_INPUT
from handler_sdk.serve.state.local import LocalState
from tests import test_store
from tests.test_store import _past_retention, _restart

S = JobStatus
BIG = {"image": "x" * 100_000}


async def _broker(path: Path, now: list[int], **cfg: Any) -> Broker:
    # No linger: every lease is written, as for a job that outlives it (a GPU job).
    return await test_store._broker(path, now, linger_s=0, **cfg)


def _conn(b: Broker) -> sqlite3.Connection:
    assert b.store is not None and b.store._conn is not None
    return b.store._conn


def _row_input(b: Broker, job_id: str) -> bytes:
    return bytes(_conn(b).execute("SELECT input FROM jobs WHERE id = ?", (job_id,)).fetchone()[0])


def _side_inputs(b: Broker) -> dict[str, bytes]:
    return {i: bytes(v) for i, v in _conn(b).execute("SELECT id, input FROM inputs")}


def _submit(b: Broker, inp: Any) -> str:
    return b.submit(RunRequest.model_validate({"input": inp})).id


async def test_a_big_input_lives_outside_its_row_through_lease_and_result(tmp_path: Path) -> None:
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now)
    try:
        job = _submit(b, BIG)
        await b.durable()
        assert _row_input(b, job) == b"" and _side_inputs(b) == {job: codec.dumps(BIG)}
        await b.take("w1", 1)
        await b.durable()  # the lease, written (no linger)
        b.done("w1", job, S.COMPLETED, output=b'"ok"')
        await b.durable()
        # The row the lease and the result rewrote holds no input: neither wrote the 100 kB again.
        assert _row_input(b, job) == b"" and _side_inputs(b) == {job: codec.dumps(BIG)}
        assert await b.input_of(b.status(job)) == BIG  # what /retry sends again
    finally:
        assert b.store is not None
        await b.store.close()


async def test_a_big_input_reads_back_whole_after_a_restart_queued_or_finished(tmp_path: Path) -> None:
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now)
    queued, finished = _submit(b, BIG), _submit(b, {**BIG, "n": 2})
    await b.take("w1", 1)  # the first in the queue
    b = await _restart(b, now)  # its lease lost: queued again
    try:
        assert b.status(queued).input == BIG and b.status(queued).status is S.IN_QUEUE
        taken = await b.take("w2", 2)
        assert [r.id for r in taken] == [queued, finished] and taken[1].input == {**BIG, "n": 2}
        b.done("w2", finished, S.FAILED, error="E: x")
        b = await _restart(b, now)
        assert await b.input_of(b.status(finished)) == {**BIG, "n": 2}
        b.retry(finished)
        assert b.status(finished).input == {**BIG, "n": 2}
    finally:
        assert b.store is not None
        await b.store.close()


async def test_a_purged_or_swept_job_takes_its_side_input_with_it(tmp_path: Path) -> None:
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now, max_retained_bytes=0)
    state = LocalState(b)
    try:
        finished, queued = _submit(b, BIG), _submit(b, {**BIG, "n": 2})
        await b.durable()
        assert set(_side_inputs(b)) == {finished, queued}
        (lease,) = await b.take("w1", 1)
        assert lease.id == finished
        b.done("w1", finished, S.COMPLETED, output=b"1")
        assert b.purge() == 1  # the queued one
        await b.durable()
        assert set(_side_inputs(b)) == {finished}
        assert _conn(b).execute("SELECT count(*) FROM jobs WHERE id = ?", (queued,)).fetchone()[0] == 0
        # The finished one left memory (a bound of 0 bytes): it lives on disk until its retention ends...
        assert finished not in b.jobs and (await state.status(finished)).output == b"1"
        assert await b.input_of(await state.status(finished)) == BIG
        await _past_retention(b, now)
        # ...and its sweep (a DELETE through the expires index) takes the side row with it.
        assert _side_inputs(b) == {} and _conn(b).execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
    finally:
        assert b.store is not None
        await b.store.close()


async def test_a_row_journaled_with_its_big_input_inline_still_reads_back(tmp_path: Path) -> None:
    """Journals written before the inputs table hold every input in its row."""
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now)
    job = _submit(b, {"n": 1})
    b = await _restart(b, now)
    assert b.store is not None
    await b.store.close()
    conn = sqlite3.connect(tmp_path / "jobs.db")
    conn.execute("UPDATE jobs SET input = ? WHERE id = ?", (codec.dumps(BIG), job))
    conn.commit()
    conn.close()
    b = await _broker(tmp_path / "jobs.db", now)
    try:
        assert b.status(job).input == BIG and _side_inputs(b) == {}
        assert b.purge() == 1  # (queued): its inline row is deleted like any other
        await b.durable()
        assert _conn(b).execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
    finally:
        await b.store.close()


@settings(max_examples=25, deadline=None)
@given(extra=st.integers(-4, 4), restart=st.booleans())
def test_an_input_stays_in_its_row_up_to_the_bound_and_moves_past_it_reading_back_the_same(
    extra: int, restart: bool
) -> None:
    import asyncio

    # {"s":"..."} with n characters encodes to n + 8 bytes: sizes on both sides of the bound.
    inp = {"s": "y" * (INLINE_INPUT - 8 + extra)}

    async def go(path: Path) -> None:
        now = [1_000]
        b = await _broker(path, now)
        job = _submit(b, inp)
        if restart:
            b = await _restart(b, now)
        else:
            await b.durable()
        try:
            inline = len(codec.dumps(inp)) <= INLINE_INPUT
            assert (_row_input(b, job) == codec.dumps(inp)) is inline
            assert (job in _side_inputs(b)) is not inline
            assert b.status(job).input == inp and await b.input_of(b.status(job)) == inp
        finally:
            assert b.store is not None
            await b.store.close()

    with tempfile.TemporaryDirectory() as d:
        asyncio.run(go(Path(d) / "jobs.db"))


def test_writing_a_big_input_job_again_keeps_its_side_row_even_with_recursive_triggers(tmp_path: Path) -> None:
    """A failed commit's changes are written again (an INSERT OR REPLACE of the same row): the REPLACE may delete
    the old row (and, with recursive triggers on, fire the trigger) but never the side row written after it."""
    from handler_sdk.serve.state import journal_rows
    from handler_sdk.serve.state.store import _SCHEMA

    conn = sqlite3.connect(tmp_path / "j.db", isolation_level=None)
    conn.executescript(_SCHEMA)
    journal_rows.migrate(conn, "ep", None)
    conn.execute("PRAGMA recursive_triggers = ON")
    data = codec.dumps(BIG)
    row = ("job-1", data, b'{"status":"IN_QUEUE","created":1,"retention":10}', None, "ep", "IN_QUEUE", None, None)
    batch: Any = ([row], [], [], [], [], [], [], None, [])
    journal_rows.write(conn, "ep", batch)
    journal_rows.write(conn, "ep", batch)
    assert journal_rows.read_input(conn, "ep", "job-1") == BIG
    assert conn.execute("SELECT count(*) FROM inputs").fetchone()[0] == 1
