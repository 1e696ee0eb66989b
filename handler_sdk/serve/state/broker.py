"""The endpoint's side of every job: the queue, leases, the lifecycle, waiting, retention.

The broker owns the truth about a job (DESIGN section 1); workers own only their lease. It never does I/O of its
own except through the store (journaling) and the ``on_terminal`` hooks (webhooks). Both the client routes and the
worker routes, and the in-process worker, call into one broker.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ... import lifecycle
from ...chunker import scrub_metrics
from ...errors import BadRequest, Conflict, NotFound, OutputNotSerializable, StoreError
from ...models import JobStatus, RunRequest
from .archive import Retained
from .finished import Finished, summary_of
from .record import JobRecord, Waiter
from .store import JobStore

__all__ = ["Broker", "BrokerConfig", "LocalWorker", "WorkerSeen", "new_job_id", "now_ms"]

S = JobStatus


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_random = bytearray()
_VARIANT = "89ab" * 4


def new_job_id() -> str:
    """A random (version 4) UUID as text. uuid.uuid4() makes a system call for every 16 bytes (2.2 us, more
    than the rest of submit); the same kernel randomness fetched 16 KiB at a time makes an id in 0.6 us."""
    global _random
    if not _random:
        _random = bytearray(os.urandom(16 << 10))
    h = _random[-16:].hex()
    del _random[-16:]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16)]}{h[17:20]}-{h[20:]}"


@dataclass(slots=True)
class BrokerConfig:
    run_retention_ms: int = 30 * 60 * 1000
    sync_retention_ms: int = 60 * 1000
    lease_ms: int = 30_000
    # A job whose worker vanished is handed out again until it has been tried this many times.
    max_attempts: int = 3
    # Server-side backstop for executionTimeout, on top of the worker's own enforcement.
    execution_grace_ms: int = 5_000
    tick_s: float = 0.05
    # Finished records past this many (estimated) bytes live only in the store until they expire (archive.py).
    max_retained_bytes: int = 1024 << 20


# What /retry changes on a record, so that a retry the journal refused can be undone field by field.
_RETRY_RESETS = (
    "status", "retries", "started", "ended", "output", "error", "error_details", "worker_id", "stream", "cursor",
    "webhook_items", "requeued",
)  # fmt: skip


class LocalWorker(Protocol):
    """A worker in this process, which the broker hands jobs to as they arrive instead of waiting for its take:
    no future, task and wake-up per job between the client's request and the handler."""

    worker_id: str

    def free(self) -> int:
        """How many more jobs it would start now (0 while it sets up, drains or is full)."""
        ...

    def start(self, records: list[JobRecord]) -> None:
        """Start these jobs, already leased to it; must not run them before returning."""
        ...


@dataclass(slots=True, eq=False)
class WorkerSeen:
    id: str
    last_seen: int
    local: bool = False
    initializing: bool = False
    jobs: set[str] = field(default_factory=set)
    stops: set[str] = field(default_factory=set)
    stop_waiter: asyncio.Future[None] | None = None
    # When it last pinged (None: it never has, so the ping rule never applies to it).
    pinged: int | None = None


class Broker:
    def __init__(
        self,
        store: JobStore | None = None,
        config: BrokerConfig | None = None,
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self.cfg = config or BrokerConfig()
        self.clock = clock
        # Finished jobs in their compact form (finished.py); thaw() or get() for a JobRecord.
        self.jobs: dict[str, JobRecord | Finished] = {}
        self.counts: dict[JobStatus, int] = dict.fromkeys(JobStatus, 0)
        self.retried = 0
        # Per-process counters for /metrics and the dashboard (plain ints: nothing on the hot path to import).
        self.submitted: dict[str, int] = {"run": 0, "runsync": 0, "openai": 0}
        self.stream_items = 0
        self.stream_bytes = 0
        self.workers: dict[str, WorkerSeen] = {}
        self.on_terminal: list[Callable[[JobRecord], None]] = []
        # Called with ("start" | "progress" | "output", record) for jobs that asked for those webhook events.
        self.on_event: list[Callable[[str, JobRecord], None]] = []
        self._queue: deque[str] = deque()
        self._low: deque[str] = deque()
        self._takers: deque[asyncio.Future[None]] = deque()
        self._deadlines: list[tuple[int, int, str, str, int]] = []
        # Finished records by retention, in the order they ended (a FIFO holds each at 8 bytes where a deadline
        # heap entry cost ~170), their bytes in memory and the bound past which they live on disk only.
        self.retained = Retained(self, self.cfg.max_retained_bytes)
        self._seq = itertools.count()
        self._last_reap = 0
        self._local: LocalWorker | None = None

    # --- start-up ------------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Load the journal: queued jobs queue again, running ones were orphaned by the restart and requeue."""
        if self.store is None:
            return
        records, meta = await self.store.open(self.cfg.max_retained_bytes, Retained.loaded_size, self.clock())
        self.retried = int(meta.get("retried", 0))
        records.sort(key=lambda r: r.created)
        for r in records:
            self.jobs[r.id] = r
            self.counts[r.status] += 1
            r.recovered = not r.status.terminal
            if r.status is S.IN_PROGRESS:
                self._requeue(r, front=False)
            elif r.status is S.IN_QUEUE:
                (self._low if r.low_priority else self._queue).append(r.id)
            if (due := r.ttl_due) is not None and not r.status.terminal:
                self._at(due, "ttl", r)
        self.retained.load([r for r in records if r.status.terminal], self.store.left_on_disk)

    # --- internals -----------------------------------------------------------------------------------------

    def _set(self, r: JobRecord, new: JobStatus) -> None:
        lifecycle.check(r.status, new)
        self.counts[r.status] -= 1
        self.counts[new] += 1
        r.status = new

    def _journal(self, r: JobRecord) -> None:
        if self.store is not None and not r.sync:
            self.store.update(r)

    def _at(self, when: int, kind: str, r: JobRecord) -> None:
        heapq.heappush(self._deadlines, (when, next(self._seq), kind, r.id, r.started or 0))

    def dispatch(self) -> None:
        """Hand queued jobs on: to the in-process worker while it has free slots, else to a waiting taker."""
        local = self._local
        if local is not None and (self._queue or self._low) and (n := local.free()) > 0:
            w = self.seen(local.worker_id, local=True)
            leased: list[JobRecord] = []
            while len(leased) < n and (r := self._pop()) is not None:
                self._lease(r, w)
                leased.append(r)
            if leased:
                local.start(leased)
        if self._queue or self._low:
            self._wake_taker()

    def attach_local(self, worker: LocalWorker) -> None:
        """Register the in-process worker that jobs are pushed to; it gets the queue's head at once."""
        self._local = worker
        self.dispatch()

    def detach_local(self, worker: LocalWorker) -> None:
        if self._local is worker:
            self._local = None

    def _wake_taker(self) -> None:
        while self._takers:
            f = self._takers.popleft()
            if not f.done():
                f.set_result(None)
                return

    def _requeue(self, r: JobRecord, *, front: bool = True) -> None:
        """Lost lease: back to the queue, or FAILED once it has been tried max_attempts times."""
        r.retries += 1
        self.retried += 1
        if self.store is not None:
            self.store.set_meta("retried", self.retried)
        if r.retries >= self.cfg.max_attempts:
            why = (
                f"job was lost with its worker {r.retries} times (max_attempts={self.cfg.max_attempts}): "
                "the worker died, was killed, or lost its lease while running it"
            )
            self._finish(r, S.FAILED, error_type="WorkerLost", message=why)
            return
        if r.stream and isinstance(r.input, dict) and "openai_route" in r.input:
            # Its client already holds part of an SSE answer: a re-run would send a second answer after it.
            why = "the worker was lost while streaming this answer; the partial answer cannot be resumed"
            self._finish(r, S.FAILED, error_type="WorkerLost", message=why)
            return
        self._queue_again(r, front=front)

    def _queue_again(self, r: JobRecord, *, front: bool = True) -> None:
        """An in-progress job goes back to the queue without its lease (lost worker, hand-back, restart)."""
        self._set(r, S.IN_QUEUE)
        # The stream stays: its items were read by clients already. The next attempt's items follow them, with
        # stream_index counting on and metrics.attempt telling the attempts apart.
        r.worker_id, r.started, r.output = None, None, None
        (self._queue.appendleft if front else self._queue.append)(r.id)
        self._journal(r)
        self.dispatch()

    def _finish(
        self,
        r: JobRecord,
        status: JobStatus,
        *,
        output: bytes | None = None,
        error: str | None = None,
        details: dict[str, Any] | None = None,
        error_type: str | None = None,
        message: str | None = None,
    ) -> None:
        if error_type is not None:
            details = {"error_type": error_type, "error_message": message, "error_traceback": None}
            error = f"{error_type}: {message}"
        self._set(r, status)
        r.ended = self.clock()
        r.output, r.error, r.error_details = output, error, details
        if status in (S.COMPLETED, S.CANCELLED):
            # Only /retry (of FAILED or TIMED_OUT) reads it again (the journal has its own copy of a /run job's);
            # finished records pile up for their retention, and the collector scans every dict they hold.
            r.input = None
        if r.worker_id is not None and (w := self.workers.get(r.worker_id)) is not None:
            w.jobs.discard(r.id)
        self._journal(r)
        self._retain(r)
        r.notify()
        for hook in self.on_terminal:
            hook(r)

    def _retain(self, r: JobRecord) -> None:
        """Queue a finished record for its expiry (and pack it: see finished.py)."""
        self.retained.add(r)

    def _expire(self, r: JobRecord | Finished, job_id: str) -> None:
        if self.jobs.get(job_id) is not r:
            return  # gone already (an earlier deadline)
        del self.jobs[job_id]
        self.counts[r.status] -= 1
        self.retained.forget(job_id, r)
        if self.store is not None and not r.sync:
            self.store.delete([job_id])

    def _expire_retained(self, now: int) -> None:
        self.retained.expire(now)

    def _stop_remote(self, r: JobRecord) -> None:
        if r.worker_id is not None and (w := self.workers.get(r.worker_id)) is not None:
            w.stops.add(r.id)
            if w.stop_waiter is not None and not w.stop_waiter.done():
                w.stop_waiter.set_result(None)

    def get(self, job_id: str) -> JobRecord:
        """The job's record (a finished one's is a copy: thaw() first to change it)."""
        r = self.jobs.get(job_id)
        if r is None:
            raise NotFound(f"job {job_id} not found (unknown, purged, or past its retention)")
        return r if isinstance(r, JobRecord) else r.thaw(job_id)

    def _leased(self, worker_id: str, job_id: str) -> JobRecord:
        r = self.get(job_id)
        if r.status is not S.IN_PROGRESS or r.worker_id != worker_id:
            raise Conflict(f"job {job_id} is {r.status} and not leased to worker {worker_id}; result ignored")
        return r

    # --- client side ---------------------------------------------------------------------------------------

    def submit(
        self,
        req: RunRequest,
        *,
        sync: bool = False,
        idempotency: tuple[str, str] | None = None,
        queue: bool = True,
        route: str | None = None,
        trace: str | None = None,
    ) -> JobRecord:
        """A new job. ``queue=False``: it is recorded (and journaled) but not queued until ``enqueue``; see
        ``submit_durable``. An input that cannot be encoded is refused (400) before the job exists. ``route`` (run,
        runsync or openai) is what /metrics counts it under; ``trace`` is the client's valid traceparent, if any."""
        now = self.clock()
        job_id = f"sync-{new_job_id()}" if sync else new_job_id()
        p = req.policy
        r = JobRecord(
            job_id, req.input, now, sync=sync, webhook=req.webhook, execution_timeout=p.execution_timeout,
            ttl=p.ttl, low_priority=p.low_priority,
            retention=self.cfg.sync_retention_ms if sync else self.cfg.run_retention_ms, trace=trace,
        )  # fmt: skip
        if idempotency is not None or req.webhook_events is not None:
            self._submit_extras(r, req, idempotency)
        if self.store is not None and not sync:
            try:
                self.store.insert(r)
            except OutputNotSerializable as e:
                raise BadRequest(f"input cannot be stored: {e}") from None
        self.submitted[route or ("runsync" if sync else "run")] += 1
        self.jobs[job_id] = r
        self.counts[S.IN_QUEUE] += 1
        if (due := r.ttl_due) is not None:
            self._at(due, "ttl", r)
        if queue:
            self.enqueue(r)
        return r

    @staticmethod
    def _submit_extras(r: JobRecord, req: RunRequest, idempotency: tuple[str, str] | None) -> None:
        r.idempotency = idempotency
        if req.webhook_events is not None and set(req.webhook_events) != {"completed"}:
            r.webhook_events = frozenset(req.webhook_events)

    def _event(self, kind: str, r: JobRecord) -> None:
        for hook in self.on_event:
            hook(kind, r)

    def enqueue(self, r: JobRecord) -> None:
        """Queue a job submitted with ``queue=False`` (unless it has ended meanwhile, e.g. cancelled)."""
        if r.status is S.IN_QUEUE and r.id in self.jobs:
            (self._low if r.low_priority else self._queue).append(r.id)
            self.dispatch()

    async def submit_durable(self, req: RunRequest) -> JobRecord:
        """A /run job: journaled first, queued after. A job the store cannot take (StoreError, answered 503) is
        forgotten, so a client told it failed never finds it running."""
        r = self.submit(req, queue=False)
        await self.journal_then_queue(r)
        return r

    async def journal_then_queue(self, r: JobRecord) -> None:
        """Queue a job submitted with ``queue=False`` once it is journaled; on StoreError forget it and raise."""
        if self.store is None:
            self.enqueue(r)
            return
        try:
            await self.store.flush()
        except StoreError:
            if self.jobs.get(r.id) is r:
                del self.jobs[r.id]
                self.counts[r.status] -= 1
                self.store.delete([r.id])
                r.notify()
            raise
        self.enqueue(r)

    async def input_of(self, r: JobRecord) -> Any:
        """A job's input: a finished /run record drops it, and the journal still has it (None for /runsync)."""
        if r.input is None and not r.sync and self.store is not None:
            return await self.store.read_input(r.id)
        return r.input

    async def durable(self) -> None:
        """Wait until every change so far is journaled."""
        if self.store is not None:
            await self.store.flush()

    def status(self, job_id: str, ttl: int | None = None) -> JobRecord:
        r = self.get(job_id)
        if ttl is not None and ttl < r.retention:
            if r.status.terminal:
                r = self.retained.thaw(job_id)
            r.retention = ttl
            self._journal(r)
            if r.expires is not None:
                self._at(r.expires, "expire", r)
                self.retained.refreeze(r)
        return r

    async def wait_terminal(self, r: JobRecord, timeout: float) -> None:
        """Wait up to ``timeout`` s for the job to end (or to be removed: purged, expired)."""
        if r.status.terminal or timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with Waiter(r) as w:
            while not r.status.terminal and self.jobs.get(r.id) is r:
                left = deadline - loop.time()
                if left <= 0 or not await w.wait(left):
                    return

    async def wait_change(self, r: JobRecord, timeout: float) -> None:
        """Wait up to ``timeout`` s for anything to happen to the job (a stream item, progress, its end)."""
        with Waiter(r) as w:
            await w.wait(timeout)

    def read_stream(self, job_id: str, start: int | None = None) -> tuple[JobRecord, Sequence[bytes]]:
        r = self.get(job_id)
        if start is not None:
            return r, r.stream[max(start, 0) :]
        items = r.stream[r.cursor :]
        if items:
            r.cursor = len(r.stream)
            self._journal(r)
        return r, items

    def cancel(self, job_id: str) -> JobRecord:
        r = self.get(job_id)
        if r.status.terminal:
            return r
        if r.status is S.IN_PROGRESS:
            self._stop_remote(r)
        self._finish(r, S.CANCELLED)
        return r

    async def retry_durable(self, job_id: str) -> JobRecord:
        """/retry: journaled first, queued after, as /run is. On StoreError (answered 503) the job is put back as
        it was, so a client told that the retry failed never finds it running."""
        r = self.get(job_id)
        before = copy.copy(r)
        r = self.retry(job_id, queue=False)
        if self.store is None:
            self.enqueue(r)
            return r
        try:
            await self.store.flush()
        except StoreError:
            if r.status is S.IN_QUEUE and self.jobs.get(r.id) is r:
                self.counts[S.IN_QUEUE] -= 1
                self.counts[before.status] += 1
                for name in _RETRY_RESETS:
                    setattr(r, name, getattr(before, name))
                self.retained.recount(r)
                self._journal(r)  # coalesces with the unwritten retry: the journal keeps the job as it was
            raise
        self.enqueue(r)
        return r

    def retry(self, job_id: str, *, queue: bool = True) -> JobRecord:
        r = self.get(job_id)
        if r.status not in (S.FAILED, S.TIMED_OUT):
            raise Conflict(f"job {job_id} is {r.status}; only FAILED or TIMED_OUT jobs can be retried")
        r = self.retained.reopen(job_id)
        self._set(r, S.IN_QUEUE)
        r.retries += 1
        r.started = r.ended = r.output = r.error = r.error_details = r.worker_id = None
        r.stream, r.cursor = (), 0
        r.webhook_items = 0  # a fresh stream for its "output" webhooks too
        # Queued again by the client, as if submitted now: a ttl that ran out (or would have) starts over.
        r.requeued = self.clock()
        if (due := r.ttl_due) is not None:
            self._at(due, "ttl", r)
        if self.store is not None and not r.sync:
            self.store.reset_stream(r.id)
        self._journal(r)
        if queue:
            self.enqueue(r)
        return r

    def purge(self) -> int:
        # The queues keep stale ids (a queued job that was cancelled, timed out or has expired is skipped when
        # popped), and a job retried after timing out in the queue is listed twice.
        queued = (self.jobs.get(i) for i in itertools.chain(self._queue, self._low))
        purged = {r.id: r for r in queued if isinstance(r, JobRecord) and r.status is S.IN_QUEUE}
        ids = list(purged)
        for r in purged.values():
            del self.jobs[r.id]
            self.counts[S.IN_QUEUE] -= 1
            r.notify()
        self._queue.clear()
        self._low.clear()
        if self.store is not None:
            self.store.delete(ids)
        return len(ids)

    def health(self) -> dict[str, Any]:
        self.reap()
        c = self.counts
        idle = running = init = 0
        for w in self.workers.values():
            if w.initializing:
                init += 1
            elif w.jobs:
                running += 1
            else:
                idle += 1
        return {
            "jobs": {
                "completed": c[S.COMPLETED],
                "failed": c[S.FAILED] + c[S.TIMED_OUT],
                "inProgress": c[S.IN_PROGRESS],
                "inQueue": c[S.IN_QUEUE],
                "retried": self.retried,
            },
            "workers": {"idle": idle, "running": running, "initializing": init},
        }

    def requests(self, limit: int, offset: int, status: JobStatus | None = None) -> dict[str, Any]:
        rows = [(k, r) for k, r in reversed(self.jobs.items()) if status is None or r.status is status]
        return {
            "requests": [summary_of(k, r) for k, r in rows[offset : offset + limit]],
            "total": len(rows),
            "limit": limit,
            "offset": offset,
        }

    def recent(self, n: int) -> list[dict[str, Any]]:
        """The newest ``n`` jobs as /requests lists them, with their error."""
        rows = []
        for k, r in itertools.islice(reversed(self.jobs.items()), n):
            d = summary_of(k, r)
            if (error := r.error) is not None:
                d["error"] = error
            rows.append(d)
        return rows

    def worker_rows(self) -> list[dict[str, Any]]:
        """The workers seen, as the dashboard lists them."""
        return [
            {"id": w.id, "state": "initializing" if w.initializing else "running" if w.jobs else "idle",
             "jobs": sorted(w.jobs), "lastPing": w.last_seen}
            for w in self.workers.values()
        ]  # fmt: skip

    # --- worker side ---------------------------------------------------------------------------------------

    def seen(self, worker_id: str, *, local: bool = False, initializing: bool | None = None) -> WorkerSeen:
        w = self.workers.get(worker_id)
        if w is None:
            w = self.workers[worker_id] = WorkerSeen(worker_id, self.clock(), local=local)
        else:
            w.last_seen = self.clock()
        if initializing is not None:
            w.initializing = initializing
        return w

    def _lease(self, r: JobRecord, w: WorkerSeen) -> None:
        self._set(r, S.IN_PROGRESS)
        r.started, r.worker_id = self.clock(), w.id
        r.attempt += 1
        # A re-run (after a lost lease or a restart) is journaled before its handler runs: a job that kills its
        # worker is then counted each time, and fails at max_attempts instead of crash-looping the endpoint.
        r.rerun = (r.attempt > 1 or r.recovered) and self.store is not None and not r.sync
        r.recovered = False
        w.jobs.add(r.id)
        if self.store is not None and not r.sync:
            self.store.update(r, now=r.rerun)
        if r.execution_timeout is not None:
            self._at(r.started + r.execution_timeout + self.cfg.execution_grace_ms, "exec", r)
        if r.webhook_events is not None:
            self._event("start", r)

    def _pop(self) -> JobRecord | None:
        for q in (self._queue, self._low):
            while q:
                r = self.jobs.get(q.popleft())
                if isinstance(r, JobRecord) and r.status is S.IN_QUEUE:
                    return r
        return None

    async def take(
        self,
        worker_id: str,
        n: int,
        wait: float = 0.0,
        *,
        local: bool = False,
        gone: Callable[[], bool] | None = None,
        busy: bool | None = None,
    ) -> list[JobRecord]:
        """Lease up to ``n`` queued jobs to the worker, holding an empty take open up to ``wait`` seconds.

        ``gone`` says whether the worker has hung up meanwhile (its connection closed): a held take of a worker
        that died leases nothing, and the job it was woken for goes to the next taker instead of sitting on a dead
        worker until the lease lapses.

        ``busy=False`` (``job_in_progress=0``) says the worker runs nothing: jobs still leased to its id were lost
        with an earlier process of the same id (a restarted container keeps its pod id) and queue again."""
        w = self.seen(worker_id, local=local, initializing=False)
        if busy is False and w.jobs and not w.local:
            self._lost(w, list(w.jobs))
        taken: list[JobRecord] = []
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            if gone is not None and gone():
                if self._queue or self._low:
                    self._wake_taker()
                return []
            while len(taken) < n and (r := self._pop()) is not None:
                self._lease(r, w)
                taken.append(r)
            remaining = deadline - asyncio.get_running_loop().time()
            if taken or remaining <= 0:
                if taken and (self._queue or self._low):
                    self._wake_taker()  # more work than this worker took: let the next taker at it
                return taken
            f = asyncio.get_running_loop().create_future()
            self._takers.append(f)
            try:
                async with asyncio.timeout(remaining):
                    await f
            except TimeoutError:
                pass  # one last look below: a wake-up may have raced the timeout
            finally:
                f.cancel()

    def _lost(self, w: WorkerSeen, job_ids: Sequence[str]) -> None:
        """These jobs' leases are lost with a process of the worker ``w``: they queue again (counted)."""
        for job_id in job_ids:
            r = self.jobs.get(job_id)
            w.jobs.discard(job_id)
            if isinstance(r, JobRecord) and r.status is S.IN_PROGRESS and r.worker_id == w.id:
                self._requeue(r)

    def stream(self, worker_id: str, job_id: str, outputs: Sequence[bytes], metrics: Sequence[bytes | None]) -> int:
        """Append stream items in order; outputs and metrics (JSON objects, or None) come serialized. Returns the
        job's item count."""
        self.seen(worker_id)
        r = self._leased(worker_id, job_id)
        stream = r.stream if isinstance(r.stream, list) else []
        r.stream = stream
        for out, m in zip(outputs, metrics, strict=True):
            idx = len(stream)
            # Splice our two fields into the serialized metrics rather than decode and re-encode them.
            tail = b'"stream_index":%d,"scenario":"stream","attempt":%d}}' % (idx, r.attempt)
            m = scrub_metrics(m)  # noqa: PLW2901 (a remote worker's values for our keys: dropped, not doubled)
            if m is None or m == b"{}":
                item = b'{"output":' + out + b',"metrics":{' + tail
            else:
                item = b'{"output":' + out + b',"metrics":' + m[:-1] + b"," + tail
            stream.append(item)
            self.stream_bytes += len(out)
            if self.store is not None and not r.sync:
                self.store.add_stream(r.id, idx, item)
        self.stream_items += len(outputs)
        r.notify()
        if r.webhook_events is not None:
            self._event("output", r)
        return len(stream)

    def progress(self, worker_id: str, job_id: str, output: bytes) -> None:
        self.seen(worker_id)
        r = self._leased(worker_id, job_id)
        r.output = output
        self._journal(r)
        r.notify()
        if r.webhook_events is not None:
            self._event("progress", r)

    def done(
        self,
        worker_id: str,
        job_id: str,
        status: JobStatus,
        *,
        output: bytes | None = None,
        error: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> JobRecord:
        """Record a worker's result; 409 (Conflict) unless the job is in progress under this worker's lease."""
        self.seen(worker_id)
        r = self._leased(worker_id, job_id)
        self._finish(r, status, output=output, error=error, details=details)
        return r

    def hand_back(self, worker_id: str, job_ids: Sequence[str]) -> int:
        """A draining worker returns jobs it will not finish: they queue again at the front, not as results."""
        self.seen(worker_id)
        n = 0
        for job_id in job_ids:
            r = self.jobs.get(job_id)
            if isinstance(r, JobRecord) and r.status is S.IN_PROGRESS and r.worker_id == worker_id:
                self.workers[worker_id].jobs.discard(job_id)
                self._queue_again(r)
                n += 1
        return n

    def ping(self, worker_id: str, job_ids: Sequence[str] = (), *, initializing: bool = False) -> None:
        """A worker's heartbeat with the jobs it runs. A job leased to it before its previous ping and missing from
        this one was lost (its process restarted under the same id): it queues again. One whole ping interval of
        grace, because the runpod worker pings from a separate process whose job list lags fresh takes."""
        w = self.seen(worker_id, initializing=initializing)
        if not w.local:
            previous, w.pinged = w.pinged, w.last_seen
            if previous is not None and w.jobs:
                named = set(job_ids)
                lost = [
                    j
                    for j in w.jobs
                    if j not in named and (r := self.jobs.get(j)) is not None and (r.started or 0) < previous
                ]
                if lost:
                    self._lost(w, lost)
        # A worker still running a job it no longer holds (cancelled, timed out, or leased to another) is told
        # to stop it again: the runpod worker drops a stop that reaches it before the job's task exists.
        for job_id in job_ids:
            r = self.jobs.get(job_id)
            if r is not None and (
                r.status in (S.CANCELLED, S.TIMED_OUT) or (not r.status.terminal and r.worker_id != worker_id)
            ):
                w.stops.add(job_id)
        if w.stops and w.stop_waiter is not None and not w.stop_waiter.done():
            w.stop_waiter.set_result(None)

    async def stops(self, worker_id: str, wait: float = 0.0, *, local: bool = False) -> list[str]:
        """Jobs this worker must stop (cancelled or timed out here), holding an empty reply up to ``wait`` s."""
        w = self.seen(worker_id, local=local)
        if not w.stops and wait > 0:
            w.stop_waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(wait):
                    await w.stop_waiter
            except TimeoutError:
                pass
            finally:
                w.stop_waiter = None
        ids = list(w.stops)
        w.stops.clear()
        return ids

    def leave(self, worker_id: str) -> None:
        """A worker that is gone: its jobs are lost leases."""
        w = self.workers.pop(worker_id, None)
        if w is None:
            return
        for job_id in list(w.jobs):
            r = self.jobs.get(job_id)
            if isinstance(r, JobRecord) and r.status is S.IN_PROGRESS and r.worker_id == worker_id:
                self._requeue(r)
        if w.stop_waiter is not None and not w.stop_waiter.done():
            w.stop_waiter.set_result(None)

    # --- time ----------------------------------------------------------------------------------------------

    def reap(self) -> None:
        """Remote workers silent for longer than their lease are gone."""
        now = self.clock()
        for w in list(self.workers.values()):
            if not w.local and now - w.last_seen > self.cfg.lease_ms:
                self.leave(w.id)

    def expire_due(self) -> None:
        """Apply every deadline that has passed: ttl, the execution backstop, and retention."""
        now = self.clock()
        self._expire_retained(now)
        while self._deadlines and self._deadlines[0][0] <= now:
            when, _, kind, job_id, started = heapq.heappop(self._deadlines)
            r = self.jobs.get(job_id)
            if r is None:
                continue
            if kind == "expire":
                if r.expires is not None and r.expires <= now:
                    self._expire(r, job_id)
            elif r.status.terminal or not isinstance(r, JobRecord):
                continue
            elif kind == "ttl" and r.ttl_due == when:  # not a deadline from before a /retry
                self._time_out(r, f"job exceeded its ttl of {r.ttl} ms")
            elif kind == "exec" and r.status is S.IN_PROGRESS and r.started == started:
                self._time_out(r, f"job exceeded its executionTimeout of {r.execution_timeout} ms")

    def _time_out(self, r: JobRecord, message: str) -> None:
        if r.status is S.IN_PROGRESS:
            self._stop_remote(r)
        self._finish(r, S.TIMED_OUT, error_type="TimeoutError", message=message)

    async def run_clock(self) -> None:
        """The background ticker; run it in the server's task group."""
        while True:
            await asyncio.sleep(self.cfg.tick_s)
            self.expire_due()
            now = self.clock()
            if now - self._last_reap >= self.cfg.lease_ms // 4:
                self._last_reap = now
                self.reap()
