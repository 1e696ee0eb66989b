"""``--store sqlite``, the default: the jobs in this process's memory (the broker), with a SQLite journal.

Everything here is the broker's, behind the interface of ``api.py``; what this module adds is the durability
rule of each route (a /run job journaled before it is queued and answered, a result before the worker is told it
was recorded, a re-run's lease before its handler starts), the Idempotency-Key index, and the read-back of a
finished job that the bound on retained jobs moved out of memory (``_on_disk``: /status, /stream, /retry, cancel
and input_of find it in the store until its retention ends).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from ...errors import HTTPError, NotFound, StoreError
from ...models import JobStatus, RunRequest
from . import views
from .api import JobView, Lease, Watch
from .broker import Broker
from .idempotency import IdempotencyKeys
from .journal import keeps
from .record import JobRecord, Waiter, wait_terminal

__all__ = ["LocalState"]


class LocalState:
    kind = "sqlite"

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.keys = IdempotencyKeys(broker)

    # Per-process hooks and counters: the broker's.
    @property
    def on_terminal(self) -> list[Callable[[Any], None]]:
        return self.broker.on_terminal

    @property
    def on_event(self) -> list[Callable[[str, Any], None]]:
        return self.broker.on_event

    @property
    def submitted(self) -> dict[str, int]:
        return self.broker.submitted

    @property
    def stream_items(self) -> int:
        return self.broker.stream_items

    @property
    def stream_bytes(self) -> int:
        return self.broker.stream_bytes

    async def open(self) -> None:
        await self.broker.open()

    async def close(self) -> None:
        if self.broker.store is not None:
            await self.broker.store.close()

    async def run_clock(self) -> None:
        await self.broker.run_clock()

    def stop(self) -> None:
        return None  # the broker's clock ends with its task's cancel

    def now(self) -> int:
        return self.broker.clock()

    # --- client side ---------------------------------------------------------------------------------------

    async def submit(
        self,
        req: RunRequest,
        *,
        sync: bool = False,
        key: str | None = None,
        route: str | None = None,
        trace: str | None = None,
    ) -> tuple[JobView, bool]:
        if key is not None and self.broker.retained.on_disk and (old := await self._key_on_disk(req, key, sync)):
            return old, True  # on disk: finished, and journaled long ago
        if sync:
            return self.keys.submit(req, key, sync=True, trace=trace, route=route)
        r, replayed = self.keys.submit(req, key, queue=False, trace=trace, route=route)
        if replayed:
            await self.broker.durable()  # journaled before we answer (the first may not be yet)
        else:
            # Journaled before it is queued and before we answer; a store error (503) leaves no job behind.
            await self._journal_then_queue(r)
        return r, replayed

    async def _key_on_disk(self, req: RunRequest, key: str, sync: bool) -> JobRecord | None:
        """The job that ``key`` names when it lives only on disk (Unprocessable if this is not its request);
        None when the key is unknown there or names a job in memory (the keys map's to answer). Called only for
        a keyed submit while jobs are on disk: an unkeyed one pays nothing for it."""
        if self.keys.find(key) is not None:
            return None
        old = await self.broker.retained.by_key(key)
        if old is None or self.keys.find(key) is not None:  # (or made again while we read)
            return None
        return self.keys.replay(old, key, req, sync)

    async def _journal_then_queue(self, r: JobRecord) -> None:
        """Queue a job submitted with ``queue=False`` once it is journaled; on StoreError forget it and raise."""
        b = self.broker
        try:
            await b.durable()
        except StoreError:
            if b.table.remove(r):
                b.journal.delete((r,))
                r.notify()
            raise
        b.enqueue(r)

    async def runsync(
        self, req: RunRequest, *, key: str | None, trace: str | None, timeout: float
    ) -> tuple[JobView, bool]:
        if key is not None and self.broker.retained.on_disk and (old := await self._key_on_disk(req, key, True)):
            return old, True
        if key is None:
            r, replayed = self.broker.submit(req, sync=True, trace=trace), False
        else:
            r, replayed = self.keys.submit(req, key, sync=True, trace=trace)
        await wait_terminal(r, timeout, self.broker.jobs)
        return r, replayed

    async def wait_terminal(self, job: JobView, timeout: float) -> JobView:
        assert isinstance(job, JobRecord)
        await wait_terminal(job, timeout, self.broker.jobs)
        return job

    async def _on_disk(self, job_id: str, *, stream: bool = False) -> JobRecord:
        """A finished job that lives only in the store; NotFound when there is none (or its retention ended)."""
        r = await self.broker.retained.read(job_id, stream=stream)
        if r is None:
            raise NotFound(f"job {job_id} not found (unknown, purged, or past its retention)")
        return r

    def watch(self, job_id: str) -> Watch:
        if job_id not in self.broker.jobs and self.broker.retained.on_disk:
            # Finished, on disk (or unknown: the read after the watch says which): nothing will change it.
            return Waiter(JobRecord(job_id, None, 0))
        return Waiter(self.broker.get(job_id))

    async def status(self, job_id: str, ttl: int | None = None) -> JobView:
        if job_id in self.broker.jobs:
            return self.broker.status(job_id, ttl)
        r = await self._on_disk(job_id)
        if ttl is not None and ttl < r.retention:
            self.broker.retained.shorten(r, ttl)
        return r

    async def read_stream(self, job_id: str, start: int | None = None) -> tuple[JobView, Sequence[bytes]]:
        if job_id in self.broker.jobs:
            return self.broker.read_stream(job_id, start)
        r = await self._on_disk(job_id, stream=True)
        if start is not None:
            return r, r.stream[max(start, 0) :]
        items = r.stream[r.cursor :]
        if items:
            r.cursor = len(r.stream)
            self.broker.store.rewrite(r)  # type: ignore[union-attr]  # on disk: there is a store
        return r, items

    async def input_of(self, job_id: str) -> Any:
        if job_id in self.broker.jobs:
            return await self.broker.input_of(self.broker.get(job_id))
        r = await self._on_disk(job_id)
        return r.input if r.input is not None or r.sync else await self.broker.input_of(r)

    async def cancel(self, job_id: str) -> JobView:
        if job_id in self.broker.jobs:
            return self.broker.cancel(job_id)
        return await self._on_disk(job_id)  # finished: a cancel changes nothing

    async def retry(self, job_id: str) -> JobView:
        """Journaled first, queued after, as /run is. On StoreError (answered 503) the job is put back as it was,
        so a client told that the retry failed never finds it running."""
        b = self.broker
        if job_id not in b.jobs:
            on_disk = await self._on_disk(job_id)
            if job_id not in b.jobs:  # not brought back by another /retry while we read
                b.retained.adopt(on_disk)
        before = copy.copy(b.get(job_id))
        r = b.retry(job_id, queue=False)
        try:
            await b.durable()
        except StoreError:
            if r.status is JobStatus.IN_QUEUE and b.jobs.get(r.id) is r:
                b.table.undo_retry(r, before)
                b.retained.recount(r)
                b.journal.update(r)  # coalesces with the unwritten retry: the journal keeps the job as it was
            raise
        b.enqueue(r)
        return r

    async def purge(self) -> int:
        removed = self.broker.purge()
        await self.broker.durable()
        return removed

    async def health(self) -> dict[str, Any]:
        return self.broker.health()

    async def requests(self, limit: int, offset: int, status: JobStatus | None = None) -> dict[str, Any]:
        """The jobs in memory, newest first, then those the bound moved to disk (the oldest finished ones)."""
        b = self.broker
        page = views.requests(b.jobs, limit, offset, status)
        if not b.retained.on_disk or b.store is None:
            return page
        held = page["total"]
        page["total"] = held + b.retained.count_on_disk(status)
        if (room := limit - len(page["requests"])) > 0 and page["total"] > held:
            await b.durable()  # the jobs leaving memory right now are on disk before we read it
            rows = await b.store.page(b.clock(), status, room, max(0, offset - held))
            page["requests"] += [r.summary() for r in rows if r.id not in b.jobs]
        return page

    async def workers(self) -> list[dict[str, Any]]:
        return views.worker_rows(self.broker.workers.values())

    async def recent(self, n: int) -> list[dict[str, Any]]:
        return views.recent(self.broker.jobs, n)

    async def flush(self) -> None:
        await self.broker.durable()

    # --- worker side ---------------------------------------------------------------------------------------

    async def take(
        self, worker_id: str, n: int, wait: float, *, gone: Callable[[], bool] | None = None, busy: bool | None = None
    ) -> Sequence[Lease]:
        jobs = await self.broker.take(worker_id, n, wait, gone=gone, busy=busy)
        for x in jobs:
            if x.rerun:
                # A re-run's lease is on disk before its worker may start it (see Broker._lease).
                try:
                    await self.broker.durable()
                except StoreError:
                    self.broker.hand_back(worker_id, [r.id for r in jobs])
                    raise
                break
        return jobs

    async def stream(
        self, worker_id: str, job_id: str, outputs: Sequence[bytes], metrics: Sequence[bytes | None]
    ) -> int:
        return self.broker.stream(worker_id, job_id, outputs, metrics)

    async def progress(self, worker_id: str, job_id: str, output: bytes) -> None:
        self.broker.progress(worker_id, job_id, output)

    async def done(
        self,
        worker_id: str,
        job_id: str,
        status: JobStatus,
        *,
        output: bytes | None = None,
        error: str | None = None,
        details: dict[str, Any] | None = None,
        durable: bool = True,
    ) -> None:
        r = self.broker.done(worker_id, job_id, status, output=output, error=error, details=details)
        if durable and keeps(r):
            await self.broker.durable()  # the worker forgets the result once we answer

    async def completed_many(
        self, worker_id: str, results: Sequence[tuple[str, bytes | None]]
    ) -> list[HTTPError | None]:
        return self.broker.completed_many(worker_id, results)

    async def ping(self, worker_id: str, job_ids: Sequence[str] = (), *, initializing: bool = False) -> None:
        self.broker.ping(worker_id, job_ids, initializing=initializing)

    async def stops(self, worker_id: str, wait: float = 0.0) -> list[str]:
        return await self.broker.stops(worker_id, wait)

    async def hand_back(self, worker_id: str, job_ids: Sequence[str]) -> int:
        return self.broker.hand_back(worker_id, job_ids)

    async def leave(self, worker_id: str) -> None:
        self.broker.leave(worker_id)
