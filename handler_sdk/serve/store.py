"""The job journal: SQLite in WAL mode, written by one thread with group commit.

Every change the broker makes is queued here, and one writer commits whatever queued up while the previous
commit ran: under load many jobs share a transaction. ``flush()`` returns a future that resolves once everything
queued so far is on disk; /run and job-done await it, so a job is journaled before /run answers and a result is
journaled before its worker is told it landed. Writes are coalesced per job: the latest state is what gets
written. A change nobody awaits waits up to ``linger_s`` for a flush to share its commit, and a lease (a job's
IN_PROGRESS state) that young is left out even then: the job's result, usually a few milliseconds later, is then
the one row write for both. No reply ever waits for a lease, so a crash loses nothing it could not lose before.

``synchronous=NORMAL`` with WAL survives a killed process (the guarantee a restart needs); a power cut can lose
the last commits. Runsync jobs are never journaled: their client holds the connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import codec
from ..errors import StoreError
from ..models import JobStatus
from .record import JobRecord

__all__ = ["JobStore", "Loaded"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, input BLOB NOT NULL, state BLOB NOT NULL, output BLOB);
CREATE TABLE IF NOT EXISTS stream (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, item BLOB NOT NULL, PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""

Loaded = tuple[list[JobRecord], dict[str, Any]]

# One commit's worth of work, built on the event loop so it sees one consistent moment.
_Batch = tuple[
    list[tuple[str, bytes, bytes, bytes | None]],  # inserts
    list[tuple[bytes, bytes | None, str]],  # updates
    list[tuple[str, int, bytes]],  # stream items
    list[str],  # deletes
    list[str],  # stream resets
    list[tuple[str, bytes]],  # meta
]


class JobStore:
    def __init__(self, path: str | Path, *, linger_s: float = 0.1) -> None:
        self.path = Path(path)
        self.linger_s = linger_s
        self._exec = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._conn: sqlite3.Connection | None = None
        self._new: dict[str, JobRecord] = {}
        self._dirty: dict[str, JobRecord] = {}
        # When each dirty job was first queued (time.monotonic()): a young lease waits for its result.
        self._since: dict[str, float] = {}
        self._stream: list[tuple[str, int, bytes]] = []
        self._deleted: set[str] = set()
        self._reset: set[str] = set()
        self._meta: dict[str, Any] = {}
        self._waiter: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        # Set when someone waits for a commit (flush, close): the writer stops lingering.
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def open(self) -> Loaded:
        """Open (creating) the database and return every journaled job and the meta values."""
        loop = asyncio.get_running_loop()
        try:
            loaded = await loop.run_in_executor(self._exec, self._open_sync)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open job store {self.path}: {e}") from e
        self._task = asyncio.create_task(self._writer(), name="journal-writer")
        return loaded

    def _open_sync(self) -> Loaded:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        self._conn = conn
        streams: dict[str, list[bytes]] = {}
        for job_id, item in conn.execute("SELECT job_id, item FROM stream ORDER BY job_id, idx"):
            streams.setdefault(job_id, []).append(bytes(item))
        records = []
        for job_id, inp, state, output in conn.execute("SELECT id, input, state, output FROM jobs"):
            r = JobRecord.restore(
                job_id, codec.loads(inp), codec.loads(state), None if output is None else bytes(output)
            )
            r.stream = streams.get(job_id, [])
            records.append(r)
        meta = {k: codec.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        return records, meta

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
        self._new[r.id] = r
        self._deleted.discard(r.id)
        self._wake.set()

    def update(self, r: JobRecord) -> None:
        if r.id not in self._new:
            if r.id not in self._dirty:
                self._since[r.id] = time.monotonic()
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

    def delete(self, ids: Sequence[str]) -> None:
        for i in ids:
            self._new.pop(i, None)
            self._dirty.pop(i, None)
            self._since.pop(i, None)
            self._deleted.add(i)
        self._wake.set()

    def set_meta(self, key: str, value: Any) -> None:
        self._meta[key] = value
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

    def _take_batch(self) -> _Batch | None:
        dirty = self._due()
        if not (self._new or dirty or self._stream or self._deleted or self._meta or self._reset):
            return None
        inserts = [(r.id, codec.dumps(r.input), codec.dumps(r.state()), r.output) for r in self._new.values()]
        updates = [(codec.dumps(r.state()), r.output, r.id) for r in dirty.values()]
        deleted = self._deleted
        stream = [s for s in self._stream if s[0] not in deleted]
        meta = [(k, codec.dumps(v)) for k, v in self._meta.items()]
        self._new, self._stream, self._meta = {}, [], {}
        resets = [i for i in self._reset if i not in self._deleted]
        deletes = list(self._deleted)
        self._reset, self._deleted = set(), set()
        return inserts, updates, stream, deletes, resets, meta

    def _commit(self, batch: _Batch) -> None:
        inserts, updates, stream, deletes, resets, meta = batch
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN")
        try:
            if inserts:
                conn.executemany("INSERT OR REPLACE INTO jobs (id, input, state, output) VALUES (?,?,?,?)", inserts)
            if updates:
                conn.executemany("UPDATE jobs SET state = ?, output = ? WHERE id = ?", updates)
            if resets:
                conn.executemany("DELETE FROM stream WHERE job_id = ?", [(i,) for i in resets])
            if stream:
                conn.executemany("INSERT OR REPLACE INTO stream (job_id, idx, item) VALUES (?,?,?)", stream)
            if deletes:
                conn.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in deletes])
                conn.executemany("DELETE FROM stream WHERE job_id = ?", [(i,) for i in deletes])
            if meta:
                conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?,?)", meta)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def _linger(self) -> None:
        """Wait (up to ``linger_s``) until someone needs a commit, so unawaited changes ride along with it."""
        if self._urgent.is_set() or self.linger_s <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.linger_s):
                await self._urgent.wait()

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            await self._linger()
            self._wake.clear()
            self._urgent.clear()
            waiter, self._waiter = self._waiter, None
            batch = self._take_batch()
            err: BaseException | None = None
            if batch is not None:
                try:
                    await loop.run_in_executor(self._exec, self._commit, batch)
                    self.commits += 1
                except Exception as e:  # reported to whoever awaits durability; the loop keeps journaling
                    log.exception("job store commit failed")
                    err = StoreError(f"job store commit failed: {e}")
            if waiter is not None and not waiter.done():
                if err is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(err)
            if self._closing and not self._wake.is_set():
                return
