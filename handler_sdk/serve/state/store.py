"""The job journal: SQLite in WAL mode, written by one thread with group commit.

Every change the broker makes is queued here, and one writer commits whatever queued up while the previous
commit ran: under load many jobs share a transaction. ``flush()`` returns a future that resolves once everything
queued so far is on disk; /run and job-done await it, so a job is journaled before /run answers and a result is
journaled before its worker is told it landed. Writes are coalesced per job: the latest state is what gets
written. A change nobody awaits waits up to ``linger_s`` for a flush to share its commit, and a lease (a job's
IN_PROGRESS state) that young is left out even then: the job's result, usually a few milliseconds later, is then
the one row write for both. No reply ever waits for a lease, so a crash loses nothing it could not lose before.

``synchronous=NORMAL`` with WAL survives a killed process (the guarantee a restart needs); a power cut can lose
the last commits. Runsync jobs are not journaled while they run (their client holds the connection); a finished
one is written here when the broker's bound on retained jobs (archive.py) moves it out of memory.

Each row carries its status and when its retention ends (``expires``, indexed): a start-up loads every unfinished
job and the newest finished ones up to that bound, ``read`` fetches one job that is not in memory, and ``sweep``
deletes the rows past their retention, through the index.

No single record and no failed commit stops the writer. A job input that cannot be encoded is refused when it is
inserted (its request fails); a commit that fails (a full disk, an unwritable file) fails the flushes waiting on
it with StoreError, and its changes are queued again and retried, with backoff, until the disk takes them.

Records are scoped by endpoint id: serve started with another ``--endpoint-id`` on the same data dir sees none of
the first endpoint's jobs (rows journaled before the scope existed belong to the first endpoint that opens them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ... import codec
from ...errors import StoreError
from ...models import JobStatus, make_error_details
from . import journal_rows as rows
from .record import JobRecord

__all__ = ["DELETED", "JobStore", "Loaded"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, input BLOB NOT NULL, state BLOB NOT NULL, output BLOB);
CREATE TABLE IF NOT EXISTS stream (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, item BLOB NOT NULL, PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""
# A commit that failed is retried after this long, doubling up to the cap, while nobody waits on it.
_RETRY_BASE_S = 0.2
_RETRY_MAX_S = 5.0

Loaded = tuple[list[JobRecord], dict[str, Any]]


class _Deleted:
    """What ``pending`` answers for a job whose delete is queued."""


DELETED = _Deleted()

# One commit's worth of work, built on the event loop so it sees one consistent moment.
_Batch = tuple[
    list[tuple[str, bytes, bytes, bytes | None, str, str, int | None]],  # inserts
    list[tuple[bytes, bytes | None, str, int | None, str]],  # updates
    list[tuple[str, int, bytes]],  # stream items
    list[str],  # deletes
    list[str],  # stream resets
    list[tuple[str, bytes]],  # meta
    int | None,  # sweep: delete the rows that expired by then
    list[tuple[int, str]],  # expiries of finished jobs that live here only
]


class JobStore:
    def __init__(self, path: str | Path, *, linger_s: float = 0.1, endpoint_id: str = "local") -> None:
        self.path = Path(path)
        self.linger_s = linger_s
        self.endpoint_id = endpoint_id
        self._exec = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._conn: sqlite3.Connection | None = None
        # Inserted jobs with their input already encoded: an input that cannot be written fails its insert.
        self._new: dict[str, tuple[JobRecord, bytes]] = {}
        self._dirty: dict[str, JobRecord] = {}
        # When each dirty job was first queued (time.monotonic()): a young lease waits for its result.
        self._since: dict[str, float] = {}
        self._stream: list[tuple[str, int, bytes]] = []
        self._deleted: set[str] = set()
        self._reset: set[str] = set()
        self._meta: dict[str, Any] = {}
        # Finished /runsync jobs leaving memory, to be written (they have no row yet).
        self._archived: dict[str, JobRecord] = {}
        # When a finished job that left memory expires: its row gets it (and so an entry in the expires index).
        self._expiring: dict[str, int] = {}
        self._sweep: int | None = None
        # (status, expires, n) of the finished jobs that open() left on disk, past the bound it was given.
        self.left_on_disk: list[tuple[str, int, int]] = []
        self._waiter: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        # Set when someone waits for a commit (flush, close): the writer stops lingering.
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0
        self.failures = 0
        self._retry_s = 0.0

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def open(
        self,
        max_finished_bytes: int | None = None,
        size: Callable[[JobRecord], int] | None = None,
        now: int | None = None,
    ) -> Loaded:
        """Open (creating) the database and return every unfinished job, the finished ones still retained at
        ``now`` (all of them without one; the newest, while ``size`` of each sums to at most
        ``max_finished_bytes``), and the meta values."""
        loop = asyncio.get_running_loop()
        try:
            loaded = await loop.run_in_executor(self._exec, self._open_sync, max_finished_bytes, size, now)
        except (sqlite3.Error, OSError) as e:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
            self._exec.shutdown(wait=False)
            raise StoreError(f"cannot open job store {self.path}: {e}") from e
        self._task = asyncio.create_task(self._writer(), name="journal-writer")
        return loaded

    def _open_sync(self, budget: int | None, size: Callable[[JobRecord], int] | None, now: int | None) -> Loaded:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        self._conn = conn
        conn.executescript(_SCHEMA)
        rows.migrate(conn, self.endpoint_id, now)
        records, self.left_on_disk = rows.load(conn, self.endpoint_id, budget, size, now)
        return records, rows.meta(conn, self.endpoint_id)

    async def read(self, job_id: str, *, stream: bool = False) -> JobRecord | None:
        """One journaled job, as its row has it (with its stream items if ``stream``); None when there is none."""

        def read() -> JobRecord | None:
            assert self._conn is not None
            return rows.read_one(self._conn, self.endpoint_id, job_id, stream=stream)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._exec, read)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"the job store cannot read job {job_id} ({e}); retry shortly") from e

    def pending(self, job_id: str) -> JobRecord | _Deleted | None:
        """A change to this job queued and not yet committed: the record to be written, DELETED, or None."""
        if job_id in self._deleted:
            return DELETED
        if (new := self._new.get(job_id)) is not None:
            return new[0]
        return self._dirty.get(job_id) or self._archived.get(job_id)

    async def read_input(self, job_id: str) -> Any:
        """A journaled job's input, which its finished record no longer holds (None when there is no row)."""

        def read() -> Any:
            assert self._conn is not None
            row = self._conn.execute(
                "SELECT input FROM jobs WHERE id = ? AND endpoint = ?", (job_id, self.endpoint_id)
            ).fetchone()
            return None if row is None else codec.loads(row[0])

        try:
            return await asyncio.get_running_loop().run_in_executor(self._exec, read)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"the job store cannot read job {job_id} ({e}); retry shortly") from e

    async def close(self) -> None:
        self._closing = True
        self._urgent.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._exec, conn.close)
        self._exec.shutdown(wait=True)

    # --- queueing changes (all called on the loop) ---------------------------------------------------------

    def insert(self, r: JobRecord) -> None:
        """Queue a new job; raises OutputNotSerializable (nothing queued) when its input cannot be written."""
        self._new[r.id] = (r, codec.dumps(r.input))
        self._deleted.discard(r.id)
        self._wake.set()

    def update(self, r: JobRecord, *, now: bool = False) -> None:
        """Queue a job's new state. ``now``: write it at the next commit even if it is a young lease (a re-run's
        lease, which must be on disk before its handler runs)."""
        if (new := self._new.get(r.id)) is not None:
            if new[0] is not r:  # a finished record thawed from its compact form is a new object
                self._new[r.id] = (r, new[1])
        else:
            if r.id not in self._dirty or now:
                self._since[r.id] = 0.0 if now else time.monotonic()
            self._dirty[r.id] = r
        self._wake.set()

    def add_stream(self, job_id: str, index: int, item: bytes) -> None:
        self._stream.append((job_id, index, item))
        self._wake.set()

    def reset_stream(self, job_id: str) -> None:
        """Drop a job's journaled stream items (a retried job starts a fresh stream)."""
        self._stream = [s for s in self._stream if s[0] != job_id]
        self._reset.add(job_id)
        self._wake.set()

    def archive(self, r: JobRecord) -> None:
        """Write a finished /runsync job, which has no row, as it leaves memory."""
        self._archived[r.id] = r
        self._deleted.discard(r.id)
        self._wake.set()

    def rewrite(self, r: JobRecord) -> None:
        """Write a job that lives only here again (read back with ``read``, then changed)."""
        if r.id in self._archived:
            self._archived[r.id] = r
        else:
            self.update(r, now=True)
            if r.expires is not None:
                self.expire_at(r.id, r.expires)

    def expire_at(self, job_id: str, when: int) -> None:
        """A finished /run job leaves memory: its row expires at ``when`` (the sweep deletes it then). Rows of jobs
        in memory carry no expiry: the broker deletes them as they expire, and the index stays off the hot path."""
        self._expiring[job_id] = when
        self._wake.set()

    def sweep(self, now: int) -> None:
        """Delete, at the next commit, the rows whose retention ended by ``now`` (through the expires index)."""
        self._sweep = now
        self._wake.set()

    def delete(self, ids: Sequence[str]) -> None:
        for i in ids:
            self._new.pop(i, None)
            self._archived.pop(i, None)
            self._expiring.pop(i, None)
            self._dirty.pop(i, None)
            self._since.pop(i, None)
            self._deleted.add(i)
        self._wake.set()

    def set_meta(self, key: str, value: Any) -> None:
        self._meta[f"{self.endpoint_id}:{key}"] = value
        self._wake.set()

    def flush(self) -> asyncio.Future[None]:
        """A future that resolves once everything queued until now is committed, but for leases younger than
        ``linger_s`` (nobody waits for a lease; its result follows)."""
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        self._urgent.set()
        self._wake.set()
        return self._waiter

    # --- the writer ----------------------------------------------------------------------------------------

    def _due(self) -> dict[str, JobRecord]:
        """The dirty jobs to write now. Leases queued less than ``linger_s`` ago stay queued (unless closing): a
        no-op job's lease and result, a few milliseconds apart, are then one row write instead of two."""
        dirty, self._dirty, since, self._since = self._dirty, {}, self._since, {}
        if self._closing or self.linger_s <= 0:
            return dirty
        cutoff = time.monotonic() - self.linger_s
        for job_id, r in dirty.items():
            if r.status is JobStatus.IN_PROGRESS and since[job_id] > cutoff:
                self._dirty[job_id] = r
                self._since[job_id] = since[job_id]
        if self._dirty:
            self._wake.set()  # come back for them: at the next flush, or after lingering
            for job_id in self._dirty:
                del dirty[job_id]
        return dirty

    def _take_batch(self) -> tuple[_Batch, _Taken] | None:
        dirty = self._due()
        work = (
            self._new or dirty or self._stream or self._deleted or self._meta or self._reset or self._archived
            or self._expiring
        )  # fmt: skip
        if not work and self._sweep is None:
            return None
        ep = self.endpoint_id
        inserts = [(r.id, inp, _state(r), r.output, ep, r.status.value, r.expires) for r, inp in self._new.values()]
        for r in self._archived.values():
            inserts.append((r.id, _input(r), _state(r), r.output, ep, r.status.value, r.expires))
        updates = [(_state(r), r.output, r.status.value, r.expires, r.id) for r in dirty.values()]
        expiring = [(when, job_id) for job_id, when in self._expiring.items() if job_id not in self._deleted]
        deleted = self._deleted
        stream = [s for s in self._stream if s[0] not in deleted]
        meta = [(k, codec.dumps(v)) for k, v in self._meta.items()]
        taken = _Taken(
            self._new, dirty, self._stream, self._deleted, self._reset, self._meta, self._archived, self._sweep,
            self._expiring,
        )  # fmt: skip
        self._new, self._stream, self._meta, self._archived, sweep, self._sweep = {}, [], {}, {}, self._sweep, None
        self._expiring = {}
        resets = [i for i in self._reset if i not in self._deleted]
        deletes = list(self._deleted)
        self._reset, self._deleted = set(), set()
        return (inserts, updates, stream, deletes, resets, meta, sweep, expiring), taken

    def _put_back(self, taken: _Taken) -> None:
        """A failed commit's changes queued again, under whatever was queued since (which is newer)."""
        for job_id, (r, inp) in taken.new.items():
            if job_id not in taken.deleted and job_id not in self._deleted:
                self._new.setdefault(job_id, (r, inp))
        for job_id, r in taken.dirty.items():
            if job_id not in self._deleted and job_id not in self._new:
                self._dirty.setdefault(job_id, r)
                self._since.setdefault(job_id, 0.0)
        self._stream = [s for s in taken.stream if s[0] not in self._reset and s[0] not in self._deleted] + self._stream
        self._deleted |= taken.deleted
        self._reset |= {i for i in taken.reset if i not in taken.deleted}
        self._meta = {**taken.meta, **self._meta}
        for job_id, r in taken.archived.items():
            if job_id not in self._deleted:
                self._archived.setdefault(job_id, r)
        if taken.sweep is not None and self._sweep is None:
            self._sweep = taken.sweep
        for job_id, when in taken.expiring.items():
            if job_id not in self._deleted:
                self._expiring.setdefault(job_id, when)

    def _commit(self, batch: _Batch) -> None:
        inserts, updates, stream, deletes, resets, meta, sweep, expiring = batch
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN")
        try:
            if inserts:
                conn.executemany(
                    "INSERT OR REPLACE INTO jobs (id, input, state, output, endpoint, status, expires) "
                    "VALUES (?,?,?,?,?,?,?)",
                    inserts,
                )
            if updates:
                # A job that runs again (a /retry) loses its expiry; a finished one keeps what it has (none, unless
                # it left memory).
                conn.executemany(
                    "UPDATE jobs SET state = ?, output = ?, status = ?, "
                    "expires = CASE WHEN ? IS NULL THEN NULL ELSE expires END WHERE id = ?",
                    updates,
                )
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
            if sweep is not None:
                rows.sweep(conn, self.endpoint_id, sweep)
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a full disk does): a failed ROLLBACK must not hide why.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    async def _linger(self) -> None:
        """Wait (up to ``linger_s``) until someone needs a commit, so unawaited changes ride along with it."""
        if self._urgent.is_set() or self.linger_s <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.linger_s):
                await self._urgent.wait()

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            await self._linger()
            self._wake.clear()
            self._urgent.clear()
            waiter, self._waiter = self._waiter, None
            try:
                err = await self._write_once()
            except Exception as e:  # a bug here must fail its flush, never end the writer
                log.exception("job store writer error")
                err = StoreError(f"job store error: {type(e).__name__}: {e}")
            if waiter is not None and not waiter.done():
                if err is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(err)
                    waiter.exception()  # retrieved: nobody may be left awaiting it
            if self._closing and (err is not None or not self._wake.is_set()):
                return  # a store that fails at close keeps what it could not write in the log, not in a hang
            if err is not None:
                await self._back_off()

    async def _write_once(self) -> StoreError | None:
        taken = self._take_batch()
        if taken is None:
            return None
        batch, changes = taken
        try:
            await asyncio.get_running_loop().run_in_executor(self._exec, self._commit, batch)
        except Exception as e:  # reported to whoever awaits durability; the changes are retried
            self.failures += 1
            self._put_back(changes)
            self._wake.set()
            log.error("job store commit failed (%s); retrying in %.1fs", e, self._next_retry_s())
            return StoreError(f"the job store cannot write ({e}); retry shortly")
        self.commits += 1
        self._retry_s = 0.0
        return None

    def _next_retry_s(self) -> float:
        return min(_RETRY_MAX_S, max(_RETRY_BASE_S, self._retry_s * 2))

    async def _back_off(self) -> None:
        """After a failed commit, wait before retrying it: a full disk is not fixed by hammering it. A flush
        (a request that wants durability) cuts the wait short, and gets its own answer."""
        self._retry_s = self._next_retry_s()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._retry_s):
                await self._urgent.wait()


@dataclasses.dataclass(slots=True)
class _Taken:
    """What a batch took from the queues, to put back if its commit fails."""

    new: dict[str, tuple[JobRecord, bytes]]
    dirty: dict[str, JobRecord]
    stream: list[tuple[str, int, bytes]]
    deleted: set[str]
    reset: set[str]
    meta: dict[str, Any]
    archived: dict[str, JobRecord]
    sweep: int | None
    expiring: dict[str, int]


def _input(r: JobRecord) -> bytes:
    """An archived /runsync job's input: kept only while a /retry may need it (a failed job's)."""
    try:
        return codec.dumps(r.input)
    except Exception:
        return b"null"


def _state(r: JobRecord) -> bytes:
    """A job's state encoded. One that cannot be (error details from a worker nested too deep) is written with
    its details as text, so that no record can stop the writer."""
    try:
        return codec.dumps(r.state())
    except Exception as e:
        log.error("job %s: state not encodable (%s); error details kept as text", r.id, e)
        state = r.state()
        if (d := r.error_details) is not None:
            etype = d.get("error_type")
            state["error_details"] = make_error_details(
                etype if isinstance(etype, str) else "HandlerError", str(d)[:4096]
            )
        return codec.dumps(state)
