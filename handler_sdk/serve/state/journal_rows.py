"""The journal's reads: its schema migrations, the rows a start-up loads, one job read back, the expiry sweep.

All of it runs in the store's thread (``JobStore`` hands these a connection there). A row carries its job's
status and, once its job finished and left memory (or at the next start-up), when its retention ends
(``expires``, indexed with the endpoint where it is set): a start-up reads the finished jobs newest first and stops
at the bound, and the sweep finds the expired ones without a scan.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from typing import Any

from ... import codec
from .pending import Batch
from .record import JobRecord

__all__ = [
    "INLINE_INPUT",
    "INLINE_OUTPUT",
    "load",
    "meta",
    "migrate",
    "page",
    "read_input",
    "read_key",
    "read_one",
    "sweep",
    "write",
]

# The columns added with the bound on retained jobs; rows journaled before them get theirs at the next open.
_COLUMNS = {"status": "TEXT", "expires": "INTEGER", "idem": "TEXT"}
# Partial: an unfinished job's row (NULL) costs no index entry, so a /run insert pays for none.
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS jobs_expires ON jobs (endpoint, expires) WHERE expires IS NOT NULL",
    # A job's Idempotency-Key, for a repeat of a job that left memory (most jobs have none: no entry).
    "CREATE INDEX IF NOT EXISTS jobs_idem ON jobs (endpoint, idem) WHERE idem IS NOT NULL",
)
# An input over this many bytes (encoded) lives in the inputs table, and its job's row holds an empty one: SQLite
# rewrites a whole row on every update, so a job's lease and then its result each wrote its input again (a 1 MB
# input: 2.7 ms and 1 MB of journal a time, against 4.8 us for a 100-byte one, measured). Small inputs stay in the
# row, where they cost no second lookup. The inputs_gone trigger (store.py) drops a side row with its job's. A side
# row is written in its job's transaction, so it cannot be missing; if a damaged file lacks one, the job reads back
# with a null input rather than stopping the start-up.
INLINE_INPUT = 1024
_INPUT = (
    "CASE WHEN jobs.input = X'' THEN coalesce((SELECT i.input FROM inputs i WHERE i.id = jobs.id), X'6e756c6c') "
    "ELSE jobs.input END"
)
# A finished job's output over this many bytes lives in the outputs table, its row's output empty (an output is
# JSON: never empty). The row is updated once more after its result, with its expiry, when the bound on retained
# jobs moves the record out of memory, and SQLite rewrites a whole row: a 1 MB output was written twice. Below a
# page (SQLite's 4 KiB) that rewrite writes the same one page either way; past it, the overflow pages too. Only a
# finished job's output goes there: a running job's (its latest progress update) changes with every update, and
# it could then shrink under a side row that nothing would delete. A finished job changes its output only when a
# /retry runs it again, and the retry's reset deletes the side row first. The outputs_gone trigger (store.py)
# deletes a side row with its job's row.
INLINE_OUTPUT = 4096
_OUTPUT = (
    "CASE WHEN jobs.output = X'' THEN coalesce((SELECT o.output FROM outputs o WHERE o.id = jobs.id), X'6e756c6c') "
    "ELSE jobs.output END"
)
_COLS = f"SELECT id, {_INPUT}, state, {_OUTPUT} FROM jobs WHERE endpoint = ?"
_LIVE = ("IN_QUEUE", "IN_PROGRESS")


def restore(job_id: str, inp: bytes, state: bytes, output: bytes | None) -> JobRecord:
    r = JobRecord.restore(job_id, codec.loads(inp), codec.loads(state), None if output is None else bytes(output))
    r.sync = job_id.startswith("sync-")  # an archived /runsync job (the prefix is how its id is made)
    return r


def migrate(conn: sqlite3.Connection, ep: str, now: int | None) -> None:
    """Bring an older journal's table up to date, and drop the rows whose retention ended while serve was down."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    if "endpoint" not in have:
        conn.execute("ALTER TABLE jobs ADD COLUMN endpoint TEXT NOT NULL DEFAULT ''")
    for name, kind in _COLUMNS.items():
        if name not in have:
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
    for index in _INDEXES:
        conn.execute(index)
    if "idem" not in have:
        _fill_keys(conn)
    conn.execute("UPDATE jobs SET endpoint = ? WHERE endpoint = ''", (ep,))  # rows from before the scope
    # Status for rows from before the column; expiry for finished rows, which get one only as they leave memory
    # (the broker deleted the rest as they expired while it ran): the one scan of a start-up, as it always was.
    rows = conn.execute(
        "SELECT id, state FROM jobs WHERE status IS NULL OR (expires IS NULL AND status NOT IN (?, ?))", _LIVE
    ).fetchall()
    if rows:
        fixed = []
        for job_id, state in rows:
            st = codec.loads(state)
            ended = st.get("ended")
            fixed.append((st["status"], None if ended is None else ended + st["retention"], job_id))
        conn.execute("BEGIN")
        conn.executemany("UPDATE jobs SET status = ?, expires = ? WHERE id = ?", fixed)
        conn.execute("COMMIT")
    if now is not None:
        sweep(conn, ep, now)


def _fill_keys(conn: sqlite3.Connection) -> None:
    """The key column for rows journaled before it: one scan, once."""
    keyed = []
    for job_id, state in conn.execute("SELECT id, state FROM jobs"):
        if (key := codec.loads(state).get("idempotency")) is not None:
            keyed.append((key[0], job_id))
    if keyed:
        conn.execute("BEGIN")
        conn.executemany("UPDATE jobs SET idem = ? WHERE id = ?", keyed)
        conn.execute("COMMIT")


def load(
    conn: sqlite3.Connection, ep: str, budget: int | None, size: Callable[[JobRecord], int] | None, now: int | None
) -> tuple[list[JobRecord], list[tuple[str, int, int]]]:
    """Every unfinished job, and the finished ones newest first while ``size`` of each sums to at most
    ``budget``; and (status, expires, n) of the finished ones left on disk. Without ``now``, every finished one."""
    now = -(2**62) if now is None else now
    records = [restore(*row) for row in conn.execute(_COLS + " AND expires IS NULL", (ep,))]
    held, oldest = 0, None
    for row in conn.execute(_COLS + " AND expires > ? ORDER BY expires DESC, id", (ep, now)):
        r = restore(*row)
        if budget is not None and size is not None:
            held += size(r)
            if held > budget:
                oldest = (r.expires, r.id)
                break
        records.append(r)
    left: list[tuple[str, int, int]] = []
    if oldest is not None:
        left = list(
            conn.execute(
                "SELECT status, expires, count(*) FROM jobs WHERE endpoint = ? AND expires > ? AND "
                "(expires < ? OR (expires = ? AND id >= ?)) GROUP BY status, expires",
                (ep, now, oldest[0], oldest[0], oldest[1]),
            )
        )
    streams: dict[str, list[bytes]] = {}
    query = (
        "SELECT s.job_id, s.item FROM stream s JOIN jobs j ON j.id = s.job_id WHERE j.endpoint = ? "
        "AND (j.expires IS NULL OR j.expires >= ?) ORDER BY s.job_id, s.idx"
    )
    for job_id, item in conn.execute(query, (ep, now if oldest is None else oldest[0])):
        streams.setdefault(job_id, []).append(bytes(item))
    for r in records:
        r.stream = streams.get(r.id, [])
    return records, left


def meta(conn: sqlite3.Connection, ep: str) -> dict[str, Any]:
    scoped: dict[str, Any] = {}
    legacy: dict[str, Any] = {}
    for k, v in conn.execute("SELECT key, value FROM meta"):
        if k.startswith(ep + ":"):
            scoped[k[len(ep) + 1 :]] = codec.loads(v)
        elif ":" not in k:
            legacy[k] = codec.loads(v)
    return {**legacy, **scoped}


def read_one(conn: sqlite3.Connection, ep: str, job_id: str, *, stream: bool) -> JobRecord | None:
    row = conn.execute(_COLS + " AND id = ?", (ep, job_id)).fetchone()
    if row is None:
        return None
    r = restore(*row)
    if stream:
        items = conn.execute("SELECT item FROM stream WHERE job_id = ? ORDER BY idx", (job_id,))
        r.stream = [bytes(i) for (i,) in items]
    return r


def read_key(conn: sqlite3.Connection, ep: str, key: str) -> JobRecord | None:
    """The job whose row carries this Idempotency-Key (through its index), None when there is none."""
    row = conn.execute(_COLS + " AND idem = ?", (ep, key)).fetchone()
    return None if row is None else restore(*row)


def page(
    conn: sqlite3.Connection, ep: str, now: int, status: str | None, *, limit: int, offset: int
) -> list[JobRecord]:
    """Finished jobs that live here only (those with an expiry), newest first as far as their expiry tells,
    without their input and output: a page of /requests past the jobs in memory."""
    query = "SELECT id, X'6e756c6c', state, NULL FROM jobs WHERE endpoint = ? AND expires > ?"
    args: list[Any] = [ep, now]
    if status is not None:
        query += " AND status = ?"
        args.append(status)
    query += " ORDER BY expires DESC, id LIMIT ? OFFSET ?"
    return [restore(*row) for row in conn.execute(query, (*args, limit, offset))]


def sweep(conn: sqlite3.Connection, ep: str, now: int) -> None:
    """Delete the rows (and their stream items) whose retention ended by ``now``, through the expires index."""
    gone = "SELECT id FROM jobs WHERE endpoint = ? AND expires <= ?"
    conn.execute(f"DELETE FROM stream WHERE job_id IN ({gone})", (ep, now))
    conn.execute("DELETE FROM jobs WHERE endpoint = ? AND expires <= ?", (ep, now))


def _insert(conn: sqlite3.Connection, inserts: list[Any], outputs: list[tuple[str, bytes]]) -> None:
    """The new rows, an input over INLINE_INPUT in the inputs table and its row's input empty (an output over
    INLINE_OUTPUT goes to ``outputs``, written by the caller). The side rows go in last: a REPLACE of a row written
    before (a failed commit's retry) must not be followed by the trigger's delete of the side row just written,
    were recursive triggers on."""
    inputs: list[tuple[str, bytes]] = []
    if any(len(row[1]) > INLINE_INPUT for row in inserts):
        inserts = [_apart(row, 1, 0, INLINE_INPUT, inputs) for row in inserts]
    if any(row[3] is not None and len(row[3]) > INLINE_OUTPUT and row[5] not in _LIVE for row in inserts):
        inserts = [row if row[5] in _LIVE else _apart(row, 3, 0, INLINE_OUTPUT, outputs) for row in inserts]
    conn.executemany(
        "INSERT OR REPLACE INTO jobs (id, input, state, output, endpoint, status, expires, idem) "
        "VALUES (?,?,?,?,?,?,?,?)",
        inserts,
    )
    if inputs:
        conn.executemany("INSERT OR REPLACE INTO inputs (id, input) VALUES (?,?)", inputs)


def _apart(row: tuple[Any, ...], at: int, key: int, limit: int, side: list[tuple[str, bytes]]) -> tuple[Any, ...]:
    """The row with its blob at index ``at`` (its job id at ``key``) left empty when the blob is over ``limit``
    bytes and so goes to its side table, queued in ``side``."""
    blob = row[at]
    if blob is None or len(blob) <= limit:
        return row
    side.append((row[key], blob))
    return (*row[:at], b"", *row[at + 1 :])


def _ended(rows: list[Any], outputs: list[tuple[str, bytes]]) -> list[Any]:
    """Finished jobs' (state, output, status, id) rows, a big output queued for the outputs table."""
    if any(row[1] is not None and len(row[1]) > INLINE_OUTPUT for row in rows):
        return [_apart(row, 1, 3, INLINE_OUTPUT, outputs) for row in rows]
    return rows


def _job_rows(
    conn: sqlite3.Connection, inserts: list[Any], ended: list[Any], running: list[Any], resets: list[str]
) -> None:
    """The jobs' rows (new, finished, running) and their side rows."""
    if resets:
        # A /retry: the job runs again and its row's output changes, so its old one goes first (before any side
        # row of this batch is written: the job may have finished again within it).
        conn.executemany("DELETE FROM outputs WHERE id = ?", [(i,) for i in resets])
    outputs: list[tuple[str, bytes]] = []
    if inserts:
        _insert(conn, inserts, outputs)
    # A finished job keeps the expiry its row has (none, unless it left memory); a job that runs again (a /retry)
    # loses it. Two statements, not one with a CASE: the finished row's update (the one of most jobs) then leaves
    # the column and its index alone, 6.1 -> 4.8 us a job in a commit of 50 (measured).
    if ended:
        conn.executemany("UPDATE jobs SET state = ?, output = ?, status = ? WHERE id = ?", _ended(ended, outputs))
    if running:
        conn.executemany("UPDATE jobs SET state = ?, output = ?, status = ?, expires = NULL WHERE id = ?", running)
    if outputs:  # after their rows, as inputs are (see _insert)
        conn.executemany("INSERT OR REPLACE INTO outputs (id, output) VALUES (?,?)", outputs)


def read_input(conn: sqlite3.Connection, ep: str, job_id: str) -> Any:
    """A journaled job's input (None when it has no row)."""
    row = conn.execute(f"SELECT {_INPUT} FROM jobs WHERE id = ? AND endpoint = ?", (job_id, ep)).fetchone()
    return None if row is None else codec.loads(row[0])


def write(conn: sqlite3.Connection | None, ep: str, batch: Batch) -> None:
    """Commit one batch of changes (pending.py), all or nothing."""
    inserts, ended, running, stream, deletes, resets, meta, sweep_to, expiring = batch
    assert conn is not None
    conn.execute("BEGIN")
    try:
        _job_rows(conn, inserts, ended, running, resets)
        if expiring:
            conn.executemany("UPDATE jobs SET expires = ? WHERE id = ?", expiring)
        if resets:
            conn.executemany("DELETE FROM stream WHERE job_id = ?", [(i,) for i in resets])
        if stream:
            conn.executemany("INSERT OR REPLACE INTO stream (job_id, idx, item) VALUES (?,?,?)", stream)
        if deletes:
            conn.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in deletes])
            conn.executemany("DELETE FROM stream WHERE job_id = ?", [(i,) for i in deletes])
        if meta:
            conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?,?)", meta)
        if sweep_to is not None:
            sweep(conn, ep, sweep_to)
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already (a full disk does): a failed ROLLBACK must not hide why.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
