"""The endpoint's side of every job, coordinated: what each change sets off, in order.

The broker owns the truth about a job (DESIGN section 1); workers own only their lease. The pieces it coordinates
each keep one thing and hand results back: ``jobs.py`` the records and their transitions, ``queue.py`` the queue
and the takes waiting on it, ``leases.py`` the workers and their leases, ``deadlines.py`` the deadlines and
``ticker.py`` what comes due, ``archive.py`` the finished jobs during their retention (in memory up to a bound, on
disk past it), ``journal.py`` what is journaled and what a start-up reads back, ``views.py`` the wire's views of
them. What remains here is the order of each transition's effects: the journal write, the wake-ups, the hooks,
the next dispatch. It does no I/O of its own except through the journal, the archive's reads and the
``on_terminal`` hooks (webhooks). The client routes, the worker routes and the in-process worker call one broker.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from ...errors import BadRequest, HTTPError, OutputNotSerializable
from ...models import JobStatus, RunRequest, make_error_details
from . import views
from .archive import Retained
from .config import BrokerConfig
from .deadlines import Deadlines
from .finished import Finished
from .ids import new_job_id, now_ms
from .jobs import JobTable, new_record
from .journal import Journal, recover
from .leases import Leases, LocalWorker, WorkerSeen
from .queue import JobQueue
from .record import JobRecord
from .store import JobStore
from .ticker import Ticker

__all__ = ["Broker", "BrokerConfig", "LocalWorker", "WorkerSeen", "new_job_id", "now_ms"]

S = JobStatus


class Broker:
    def __init__(
        self,
        store: JobStore | None = None,
        config: BrokerConfig | None = None,
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self.journal = Journal(store)
        self.cfg = config or BrokerConfig()
        self.clock = clock
        self.table = JobTable()
        self.jobs = self.table.records
        self.counts = self.table.counts
        self.retried = 0
        # Per-process counters for /metrics and the dashboard (plain ints: nothing on the hot path to import).
        self.submitted: dict[str, int] = {"run": 0, "runsync": 0, "openai": 0}
        self.stream_items = 0
        self.stream_bytes = 0
        self.leases = Leases()
        self.workers = self.leases.workers
        self.on_terminal: list[Callable[[JobRecord], None]] = []
        # Called with ("start" | "progress" | "output", record) for jobs that asked for those webhook events.
        self.on_event: list[Callable[[str, JobRecord], None]] = []
        self.queue = JobQueue()
        self.deadlines = Deadlines()
        # Finished records by retention, in the order they ended (a FIFO holds each at 8 bytes where a deadline
        # heap entry cost ~170), their bytes in memory and the bound past which they live on disk only.
        self.retained = Retained(self, self.cfg.max_retained_bytes)
        self.ticker = Ticker(self)
        self._local: LocalWorker | None = None

    # --- start-up ------------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Load the journal: queued jobs queue again, running ones were orphaned by the restart and requeue."""
        await recover(self)

    # --- handing jobs on -----------------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Hand queued jobs on: to the in-process worker while it has free slots, else to a waiting taker."""
        local, queue = self._local, self.queue
        if local is not None and queue and (n := local.free()) > 0:
            leased = queue.pop_many(self.jobs, n)
            if leased:
                self._lease_all(self.seen(local.worker_id, local=True), leased)
                local.start(leased)
        if queue.takers and queue:
            queue.wake()

    def attach_local(self, worker: LocalWorker) -> None:
        """Register the in-process worker that jobs are pushed to; it gets the queue's head at once."""
        self._local = worker
        self.dispatch()

    def detach_local(self, worker: LocalWorker) -> None:
        if self._local is worker:
            self._local = None

    def _lease(self, r: JobRecord, w: WorkerSeen, now: int) -> None:
        self.table.lease(r, w.id, now)
        # A re-run (after a lost lease or a restart) is journaled before its handler runs: a job that kills its
        # worker is then counted each time, and fails at max_attempts instead of crash-looping the endpoint.
        r.rerun = (r.attempt > 1 or r.recovered) and self.journal.keeps(r)
        r.recovered = False
        w.jobs.add(r.id)
        self.journal.update(r, now=r.rerun)
        if r.execution_timeout is not None:
            self.deadlines.at(now + r.execution_timeout + self.cfg.execution_grace_ms, "exec", r)
        if r.webhook_events is not None:
            self._event("start", r)

    def requeue(self, r: JobRecord, *, front: bool = True) -> None:
        """Lost lease: back to the queue, or FAILED once it has been tried max_attempts times."""
        self.retried += 1
        self.journal.set_meta("retried", self.retried)
        if (why := self.table.lost(r, self.cfg.max_attempts)) is not None:
            self._finish(r, S.FAILED, error_type="WorkerLost", message=why)
        else:
            self._queue_again(r, front=front)

    def _queue_again(self, r: JobRecord, *, front: bool = True) -> None:
        self.table.unlease(r)
        self.queue.put_back(r, front=front)
        self.journal.update(r)
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
        message: str = "",
        now: int | None = None,
    ) -> None:
        if error_type is not None:
            details = make_error_details(error_type, message)
            error = f"{error_type}: {message}"
        self.table.finish(r, status, self.clock() if now is None else now, output=output, error=error, details=details)
        self.leases.release(r)
        self.journal.update(r)
        self.retained.add(r)  # (and packed: see finished.py)
        r.notify()
        for hook in self.on_terminal:
            hook(r)

    def _expire(self, r: JobRecord | Finished, job_id: str) -> None:
        if not self.table.drop(job_id, r):
            return  # gone already (an earlier deadline)
        self.retained.forget(job_id, r)
        if self.store is not None and not r.sync:
            self.store.delete([job_id])

    def _event(self, kind: str, r: JobRecord) -> None:
        for hook in self.on_event:
            hook(kind, r)

    def get(self, job_id: str) -> JobRecord:
        return self.table.get(job_id)

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
        """A new job. ``queue=False``: it is recorded (and journaled) but not queued until ``enqueue`` (a /run
        job is queued once it is durable: ``LocalState.submit``). An input that cannot be encoded is refused (400)
        before the job exists. ``route`` (run, runsync or openai) is what /metrics counts it under; ``trace`` is
        the client's valid traceparent, if any."""
        retention = self.cfg.sync_retention_ms if sync else self.cfg.run_retention_ms
        job_id = f"sync-{new_job_id()}" if sync else new_job_id()
        r = new_record(req, job_id, self.clock(), sync=sync, retention=retention, trace=trace)
        if idempotency is not None:
            r.idempotency = idempotency
        try:
            self.journal.insert(r)
        except OutputNotSerializable as e:
            raise BadRequest(f"input cannot be stored: {e}") from None
        self.submitted[route or ("runsync" if sync else "run")] += 1
        self.table.add(r)
        if (due := r.ttl_due) is not None:
            self.deadlines.at(due, "ttl", r)
        if queue:
            self.enqueue(r)
        return r

    def enqueue(self, r: JobRecord) -> None:
        """Queue a job submitted with ``queue=False`` (unless it has ended meanwhile, e.g. cancelled)."""
        if r.status is not S.IN_QUEUE or r.id not in self.jobs:
            return
        local = self._local
        if local is not None and not self.queue and local.free() > 0:
            # What dispatch would do with it, without its trip through the queue: nothing waits ahead of it.
            now = self.clock()
            self._lease(r, self.leases.seen(local.worker_id, now, local=True), now)
            local.start([r])
            return
        self.queue.add(r)
        self.dispatch()

    async def input_of(self, r: JobRecord) -> Any:
        """A job's input: a finished /run record drops it, and the journal still has it (None for /runsync)."""
        return await self.journal.read_input(r)

    async def durable(self) -> None:
        """Wait until every change so far is journaled."""
        await self.journal.flush()

    def status(self, job_id: str, ttl: int | None = None) -> JobRecord:
        r = self.get(job_id)
        if ttl is not None and ttl < r.retention:
            if r.status.terminal:
                r = self.retained.thaw(job_id)
            r.retention = ttl
            self.journal.update(r)
            if r.expires is not None:
                self.deadlines.at(r.expires, "expire", r)
                self.retained.refreeze(r)
        return r

    def read_stream(self, job_id: str, start: int | None = None) -> tuple[JobRecord, Sequence[bytes]]:
        r = self.get(job_id)
        if start is not None:
            return r, r.stream[max(start, 0) :]
        items = r.stream[r.cursor :]
        if items:
            r.cursor = len(r.stream)
            self.journal.update(r)
        return r, items

    def cancel(self, job_id: str) -> JobRecord:
        r = self.get(job_id)
        if r.status.terminal:
            return r
        if r.status is S.IN_PROGRESS:
            self.leases.stop(r)
        self._finish(r, S.CANCELLED)
        return r

    def retry(self, job_id: str, *, queue: bool = True) -> JobRecord:
        r = self.get(job_id)
        self.table.retryable(r)
        r = self.retained.reopen(job_id)
        self.table.retry(r, self.clock())
        if (due := r.ttl_due) is not None:
            self.deadlines.at(due, "ttl", r)
        self.journal.reset_stream(r)
        self.journal.update(r)
        if queue:
            self.enqueue(r)
        return r

    def purge(self) -> int:
        gone = self.queue.queued(self.jobs)
        for r in gone:
            self.table.remove(r)
            r.notify()
        self.queue.clear()
        self.journal.delete(gone)
        return len(gone)

    def health(self) -> dict[str, Any]:
        self.reap()
        return views.health(self.counts, self.retried, self.workers.values())

    # --- worker side ---------------------------------------------------------------------------------------

    def seen(self, worker_id: str, *, local: bool = False, initializing: bool | None = None) -> WorkerSeen:
        w = self.workers.get(worker_id)
        if w is not None and initializing is None:  # most calls: a known worker's lease renewed
            w.last_seen = self.clock()
            return w
        return self.leases.seen(worker_id, self.clock(), local=local, initializing=initializing)

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
        """Lease up to ``n`` queued jobs to the worker, holding an empty take open up to ``wait`` seconds (``gone``:
        the worker hung up, see ``JobQueue.take``).

        ``busy=False`` (``job_in_progress=0``) says the worker runs nothing: jobs still leased to its id were lost
        with an earlier process of the same id (a restarted container keeps its pod id) and queue again."""
        w = self.seen(worker_id, local=local, initializing=False)
        if busy is False and w.jobs and not w.local:
            self._lost(w, list(w.jobs))
        return await self.queue.take(self.jobs, n, wait, functools.partial(self._lease_all, w), gone)

    def _lease_all(self, w: WorkerSeen, records: list[JobRecord]) -> None:
        now = self.clock()  # (one read for a take's jobs, which leave the queue together)
        for r in records:
            self._lease(r, w, now)

    def _lost(self, w: WorkerSeen, job_ids: Sequence[str]) -> None:
        """These jobs' leases are lost with a process of the worker ``w``: they queue again (counted)."""
        w.jobs.difference_update(job_ids)
        for r in self.table.held(w.id, job_ids):
            self.requeue(r)

    def stream(self, worker_id: str, job_id: str, outputs: Sequence[bytes], metrics: Sequence[bytes | None]) -> int:
        """Append stream items in order; outputs and metrics (JSON objects, or None) come serialized. Returns the
        job's item count."""
        self.seen(worker_id)
        r = self.table.leased(worker_id, job_id)
        self.journal.add_stream(r, self.table.append_stream(r, outputs, metrics))
        self.stream_bytes += sum(map(len, outputs))
        self.stream_items += len(outputs)
        r.notify()
        if r.webhook_events is not None:
            self._event("output", r)
        return len(r.stream)

    def progress(self, worker_id: str, job_id: str, output: bytes) -> None:
        self.seen(worker_id)
        r = self.table.leased(worker_id, job_id)
        r.output = output
        self.journal.update(r)
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
        """Record a worker's result; 409 (Conflict) unless the job is in progress under this worker's lease.

        The worker's slot is free from here on, and the queue's head is offered (to the in-process worker, which
        leaves its freed slot to this call) only now that the result is recorded, or refused: by the endpoint's
        clock no job starts before the one it waited for ended."""
        try:
            self.seen(worker_id)
            r = self.table.leased(worker_id, job_id)
            self._finish(r, status, output=output, error=error, details=details)
        finally:
            self.dispatch()
        return r

    def completed_many(self, worker_id: str, results: Sequence[tuple[str, bytes | None]]) -> list[HTTPError | None]:
        """Many plain successes of one worker (a job-done-batch), each recorded as ``done`` records it: a verdict
        per result, None or the Conflict (409) / NotFound (404) that ``done`` raises. The worker is seen, the clock
        read and the queue's head offered once for the batch, after every result is recorded (a drain's worker
        sends hundreds in one request)."""
        self.seen(worker_id)
        now, leased, finish, completed = self.clock(), self.table.leased, self._finish, S.COMPLETED
        verdicts: list[HTTPError | None] = []
        try:
            for job_id, output in results:
                try:
                    r = leased(worker_id, job_id)
                except HTTPError as e:
                    verdicts.append(e)
                    continue
                finish(r, completed, output=output, now=now)
                verdicts.append(None)
        finally:
            self.dispatch()
        return verdicts

    def hand_back(self, worker_id: str, job_ids: Sequence[str]) -> int:
        """A draining worker returns jobs it will not finish: they queue again at the front, not as results."""
        w = self.seen(worker_id)
        held = self.table.held(worker_id, job_ids)
        for r in held:
            w.jobs.discard(r.id)
            self._queue_again(r)
        return len(held)

    def ping(self, worker_id: str, job_ids: Sequence[str] = (), *, initializing: bool = False) -> None:
        """A worker's heartbeat with the jobs it runs: a job it lost is requeued, one it should not run is stopped
        again (see ``Leases.unnamed`` and ``Leases.restop``)."""
        w = self.seen(worker_id, initializing=initializing)
        if not w.local and (lost := self.leases.unnamed(w, job_ids, self.jobs)):
            self._lost(w, lost)
        self.leases.restop(w, job_ids, self.jobs)

    async def stops(self, worker_id: str, wait: float = 0.0, *, local: bool = False) -> list[str]:
        """Jobs this worker must stop (cancelled or timed out here), holding an empty reply up to ``wait`` s."""
        return await self.leases.stops(self.seen(worker_id, local=local), wait)

    def leave(self, worker_id: str) -> None:
        """A worker that is gone: its jobs are lost leases."""
        w = self.workers.pop(worker_id, None)
        if w is None:
            return
        for r in self.table.held(worker_id, w.jobs):
            self.requeue(r)
        w.wake()

    # --- time (ticker.py finds what is due) ----------------------------------------------------------------

    def expire_due(self) -> None:
        self.ticker.expire_due()

    def reap(self) -> None:
        self.ticker.reap()

    async def run_clock(self) -> None:
        await self.ticker.run()

    def time_out(self, r: JobRecord, message: str) -> None:
        if r.status is S.IN_PROGRESS:
            self.leases.stop(r)
        self._finish(r, S.TIMED_OUT, error_type="TimeoutError", message=message)
