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
deletes the rows past their retention, through the index. An input over ``journal_rows.INLINE_INPUT`` bytes is
written once, to a table of its own (``inputs``), so that a job's lease and result, which rewrite its row, do not
write the input again; an output over ``journal_rows.INLINE_OUTPUT`` bytes likewise lives in ``outputs``, so that
the expiry its row gets when the record leaves memory does not write the output again.

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
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import StoreError
from ...models import JobStatus
from . import journal_rows as rows
from .pending import DELETED, Pending
from .record import JobRecord

__all__ = ["DELETED", "JobStore", "Loaded"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, input BLOB NOT NULL, state BLOB NOT NULL, output BLOB);
CREATE TABLE IF NOT EXISTS stream (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, item BLOB NOT NULL, PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS inputs (id TEXT PRIMARY KEY, input BLOB NOT NULL);
CREATE TRIGGER IF NOT EXISTS inputs_gone AFTER DELETE ON jobs WHEN OLD.input = X'' BEGIN
    DELETE FROM inputs WHERE id = OLD.id;
END;
CREATE TABLE IF NOT EXISTS outputs (id TEXT PRIMARY KEY, output BLOB NOT NULL);
CREATE TRIGGER IF NOT EXISTS outputs_gone AFTER DELETE ON jobs WHEN OLD.output = X'' BEGIN
    DELETE FROM outputs WHERE id = OLD.id;
END;
"""
# A commit that failed is retried after this long, doubling up to the cap, while nobody waits on it.
_RETRY_BASE_S = 0.2
_RETRY_MAX_S = 5.0

Loaded = tuple[list[JobRecord], dict[str, Any]]


class JobStore(Pending):
    def __init__(self, path: str | Path, *, linger_s: float = 0.1, endpoint_id: str = "local") -> None:
        super().__init__(linger_s, endpoint_id)
        self.path = Path(path)
        self._exec = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._conn: sqlite3.Connection | None = None
        # /requests' pages past the jobs in memory read on their own connection, opened on the first one.
        self._list_exec = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal-list")
        self._lister: sqlite3.Connection | None = None
        # (status, expires, n) of the finished jobs that open() left on disk, past the bound it was given.
        self.left_on_disk: list[tuple[str, int, int]] = []
        self._waiter: asyncio.Future[None] | None = None
        # Set when someone waits for a commit (flush, close): the writer stops lingering.
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
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
            self._list_exec.shutdown(wait=False)
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

    async def read_key(self, key: str) -> JobRecord | None:
        """The journaled job that this Idempotency-Key names (written or queued); None when there is none."""
        if (r := self.pending_key(key)) is not None:
            return r

        def read() -> JobRecord | None:
            assert self._conn is not None
            return rows.read_key(self._conn, self.endpoint_id, key)

        try:
            r = await asyncio.get_running_loop().run_in_executor(self._exec, read)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"the job store cannot look up an idempotency key ({e}); retry shortly") from e
        return None if r is None or self.pending(r.id) is DELETED else r

    async def page(self, now: int, status: JobStatus | None, limit: int, offset: int) -> list[JobRecord]:
        """A page of the finished jobs that live here only (journal_rows.page), as last committed. It runs on a
        connection and thread of its own: a deep offset, or a status few rows have, walks much of the index, and
        the writer (and every /run waiting on a commit) must not wait behind it."""

        def read() -> list[JobRecord]:
            if self._lister is None:
                self._lister = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                self._lister.execute("PRAGMA query_only = 1")
            st = None if status is None else status.value
            return rows.page(self._lister, self.endpoint_id, now, st, limit=limit, offset=offset)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._list_exec, read)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"the job store cannot list jobs ({e}); retry shortly") from e

    async def read_input(self, job_id: str) -> Any:
        """A journaled job's input, which its finished record no longer holds (None when there is no row)."""

        def read() -> Any:
            assert self._conn is not None
            return rows.read_input(self._conn, self.endpoint_id, job_id)

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
        if self._lister is not None:
            await asyncio.get_running_loop().run_in_executor(self._list_exec, self._lister.close)
            self._lister = None
        self._list_exec.shutdown(wait=True)

    # --- queueing changes (all called on the loop) ---------------------------------------------------------

    def flush(self) -> asyncio.Future[None]:
        """A future that resolves once everything queued until now is committed, but for leases younger than
        ``linger_s`` (nobody waits for a lease; its result follows)."""
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        self._urgent.set()
        self._wake.set()
        return self._waiter

    # --- the writer ----------------------------------------------------------------------------------------

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
            self._woken = False
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
        taken = self.take_batch()
        if taken is None:
            return None
        batch, changes = taken
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._exec, rows.write, self._conn, self.endpoint_id, batch
            )
        except Exception as e:  # reported to whoever awaits durability; the changes are retried
            self.failures += 1
            self.put_back(changes)
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
