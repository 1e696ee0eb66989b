"""Dynamic batching: jobs taken one at a time run through the handler in lists.

A batched handler (``@handler(batch_size=N, batch_wait_ms=W)``) is called with up to N jobs at once and returns
one output per job. The Worker still runs one task per job, so each job keeps its own report, lease, progress,
cancel and timeout; that task waits on the job's :class:`Ticket` here instead of running the handler. The
:class:`Batcher` starts a batch when N jobs are waiting, or W ms after the first of them was taken, while fewer
than ``limit()`` batches run (concurrency counts batches).

Time comes from a :class:`Clock`: the running event loop by default (``time`` and ``call_at``), a hand-driven one
in the tests, so every deadline (a batch's wait, a job's timeout) can be stepped through without sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import files
from .errors import ConfigError, HandlerError
from .handler import Handler, HandlerKind
from .job import Job
from .runner import DEFAULT_RESULT_CAP, Outcome, failure, prepare, returned, timed_out
from .threads import ElasticPool

__all__ = ["Batcher", "Clock", "Ticket", "Timer"]

log = logging.getLogger(__name__)

# asyncio runs a timer up to its clock resolution early: a batch whose deadline is this close is due.
_EPS = 1e-6


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Seconds on a monotonic clock, and callbacks at a time on it (the subset of an event loop used here)."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer: ...


class _LoopClock:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def time(self) -> float:
        return self._loop.time()

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        return self._loop.call_at(when, callback)


@dataclass(slots=True, eq=False)
class Ticket:
    """One job's place in the batcher: what the handler gets for it, when it was taken, and its outcome."""

    job: Job
    arg: Any
    taken: float
    fut: asyncio.Future[Outcome]
    timer: Timer | None = None
    batch: _Batch | None = None


@dataclass(slots=True, eq=False)
class _Batch:
    tickets: list[Ticket]
    task: asyncio.Task[None] | None = None
    started: float = 0.0
    seq: int = field(default=0)


class Batcher:
    """Gathers the jobs of a batched handler into batches and runs them; see the module docstring."""

    def __init__(
        self,
        h: Handler,
        pool: ElasticPool,
        *,
        limit: Callable[[], int] | None = None,
        result_cap: int = DEFAULT_RESULT_CAP,
        clock: Clock | None = None,
    ) -> None:
        if h.batch_size is None or h.batch_wait_ms is None:
            raise ConfigError(f"{h.name} is not a batched handler (no batch_size)")
        self.h = h
        self.pool = pool
        self.size = h.batch_size
        self.wait_s = h.batch_wait_ms / 1000
        self._limit = limit if limit is not None else (lambda: h.concurrency)
        self._cap = result_cap
        self._clock = clock
        self._pending: deque[Ticket] = deque()
        self._running: set[_Batch] = set()
        self._timer: Timer | None = None
        self._timer_for: Ticket | None = None
        self._seq = 0
        self._flushing = False
        # Called with each batch as it starts (its size and start time): for tests and metrics.
        self.on_start: Callable[[list[Job], float], None] | None = None

    @property
    def clock(self) -> Clock:
        if self._clock is None:
            self._clock = _LoopClock(asyncio.get_running_loop())
        return self._clock

    @property
    def waiting(self) -> int:
        """Jobs taken that no batch has started with yet."""
        return len(self._pending)

    @property
    def batches(self) -> int:
        """Batches running now."""
        return len(self._running)

    def free(self) -> int:
        """How many more jobs to take now: room in the batches that could start, less the jobs already waiting.

        Taking no more than that keeps every taken job within ``batch_wait_ms`` of its batch's start (unless
        the concurrency limit drops meanwhile), and lets one take fill a whole batch."""
        return max(0, (self._limit() - len(self._running)) * self.size - len(self._pending))

    def add(self, job: Job, timeout: float | None = None) -> Ticket:
        """Queue a job for the next batch (must be called on the event loop). Its input is validated now: an
        invalid one gets its FAILED outcome at once and never enters a batch. ``timeout`` (seconds, from now)
        ends it TIMED_OUT, alone."""
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        now = self.clock.time()
        try:
            arg = prepare(self.h, job)
        except Exception as e:
            fut.set_result(failure(e))
            return Ticket(job, None, now, fut)
        t = Ticket(job, arg, now, fut)
        if timeout is not None:
            t.timer = self.clock.call_at(now + timeout, functools.partial(self._expire, t, timeout))
        self._pending.append(t)
        # Only a full batch starts here: the other jobs of the same take are added next, and a due partial batch
        # waits for its timer (at the earliest the next loop iteration), so that even at batch_wait_ms=0 one
        # take makes one batch, not a batch per job.
        self._start_due(full_only=True)
        return t

    def flush(self) -> None:
        """No more jobs will come (the worker drains): from now on a batch starts without waiting to fill."""
        self._flushing = True
        if self._pending:
            self._start_due()

    async def result(self, t: Ticket) -> Outcome:
        """The job's outcome once its batch ends (or its timeout does). Cancelling the caller drops the job: out
        of the queue if its batch has not started, else its output is discarded when the batch ends."""
        try:
            return await t.fut
        except asyncio.CancelledError:
            t.job._mark_cancelled()
            self._forget(t)
            raise

    # --- internals ---------------------------------------------------------------------------------------

    def _expire(self, t: Ticket, timeout: float) -> None:
        t.timer = None
        if t.fut.done():
            return
        t.job._mark_cancelled()
        t.fut.set_result(timed_out(timeout))
        self._forget(t)

    def _forget(self, t: Ticket) -> None:
        """The job needs nothing more from us: out of the queue, or out of its batch."""
        if t.timer is not None:
            t.timer.cancel()
            t.timer = None
        b = t.batch
        if b is None:
            try:
                self._pending.remove(t)
            except ValueError:
                return  # failed validation, or already settled
            self._start_due()
            return
        if b in self._running and all(x.fut.done() for x in b.tickets):
            # No job of the batch waits for it any more (each cancelled or timed out): stop it, as a lone job
            # is stopped, and free its slot now (an abandoned sync thread runs on, as for a lone sync job).
            self._running.discard(b)
            if b.task is not None:
                b.task.cancel()
            self._start_due()

    def _start_due(self, *, full_only: bool = False) -> None:
        """Start every batch that is full, or whose first job has waited ``batch_wait_ms``, while a slot is
        free; then set the timer for the next one."""
        now = self.clock.time()
        limit = self._limit()
        while self._pending and len(self._running) < limit:
            if len(self._pending) < self.size and (full_only or now < self._due(self._pending[0]) - _EPS):
                break
            tickets: list[Ticket] = []
            while self._pending and len(tickets) < self.size:
                t = self._pending.popleft()
                if not t.job.cancelled:  # stopped before its task could tell us (the worker marks it first)
                    tickets.append(t)
            if tickets:
                self._launch(tickets, now)
        head = self._pending[0] if self._pending and len(self._running) < limit else None
        if head is self._timer_for:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_for = None
        if head is not None:
            # With every slot busy no timer is needed: the end of a batch looks again.
            self._timer_for = head
            self._timer = self.clock.call_at(self._due(head), self._on_timer)

    def _due(self, t: Ticket) -> float:
        return t.taken if self._flushing else t.taken + self.wait_s

    def _on_timer(self) -> None:
        self._timer = self._timer_for = None
        self._start_due()

    def _launch(self, tickets: list[Ticket], now: float) -> None:
        self._seq += 1
        b = _Batch(tickets, started=now, seq=self._seq)
        for t in tickets:
            t.batch = b
        self._running.add(b)
        if self.on_start is not None:
            self.on_start([t.job for t in tickets], now)
        log.debug("batch %d of %d job(s) started", b.seq, len(tickets))
        b.task = asyncio.get_running_loop().create_task(self._run(b), name=f"batch-{b.seq}")

    async def _run(self, b: _Batch) -> None:
        outcomes: list[Outcome] | None = None
        args = [t.arg for t in b.tickets]
        # files.download() in a batch goes to one folder for the batch, removed when the batch ends.
        token = files.enter_job(f"batch-{b.seq}")
        try:
            if self.h.kind is HandlerKind.SYNC:
                values = await self.pool.run(self.h.fn, args)
            else:
                values = await self.h.fn(args)
        except Exception as e:
            outcomes = [failure(e) for _ in b.tickets]  # each its own details: the worker adds its id to each
        else:
            outcomes = await self._split(values, b.tickets)
        finally:
            files.leave_job(f"batch-{b.seq}", token)
            # The slot frees before any job hears its outcome: a job's end may take the next jobs at once.
            self._running.discard(b)
            if outcomes is None:  # cancelled (or a BaseException): no outcome for anyone still waiting
                for t in b.tickets:
                    if not t.fut.done():
                        t.fut.cancel()
            self._start_due()
        assert outcomes is not None  # every way out of the try without one raised
        for t, o in zip(b.tickets, outcomes, strict=True):
            if t.timer is not None:
                t.timer.cancel()
                t.timer = None
            if not t.fut.done():  # else cancelled or timed out meanwhile: its output is dropped
                t.fut.set_result(o)

    async def _split(self, values: Any, tickets: list[Ticket]) -> list[Outcome]:
        n = len(tickets)
        if not isinstance(values, list | tuple):
            err = HandlerError(
                f"a batched handler must return a list of {n} outputs (one per job, in order), "
                f"got {type(values).__name__}"
            )
            return [failure(err) for _ in range(n)]
        if len(values) != n:
            err = HandlerError(
                f"the batched handler returned {len(values)} outputs for a batch of {n} jobs; "
                "it must return one output per job, in order"
            )
            return [failure(err) for _ in range(n)]
        out = []
        for v, t in zip(values, tickets, strict=True):
            if isinstance(v, Exception):
                out.append(failure(v))
                continue
            try:
                out.append(await returned(v, self._cap, t.job.id))
            except Exception as e:  # {"error": ...}, not serializable, too large: this job alone
                out.append(failure(e))
        return out
