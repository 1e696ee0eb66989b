"""The worker runtime: take jobs, run them, report them; heartbeat, cancel, drain.

The same Worker runs inside ``serve`` (with the in-process transport) and in a container (over HTTP). It never
lets a job's failure escape: every job ends in exactly one report, or, when it is cancelled or handed back at a
drain deadline, in none (the endpoint already knows its fate).

A setup state with an ``until_dead()`` coroutine (the vLLM engine has one) can declare the process dead: when it
returns a reason, or a job raises WorkerDead, the worker takes nothing more, stops pinging, fails its running
jobs with that reason, and ``run`` raises WorkerDead so that the process exits non-zero and is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Any

from .. import trace
from ..batching import Batcher, Ticket
from ..checks import run_checks
from ..collector import after_setup
from ..errors import SetupError, StaleResult, TransportError, WorkerDead
from ..handler import Handler
from ..job import Job
from ..models import JobStatus
from ..runner import Outcome, error_details, run_job
from ..threads import ElasticPool
from .options import WorkerConfig, WorkerState
from .polls import ping_loop, stop_loop
from .progress import Progress
from .reporting import Reporter
from .sender import StreamSender
from .spool import Spool
from .taking import TakePump, modified_limit
from .transport import Assignment, Multiplexing, Pushing, StreamSink, Transport

__all__ = ["Worker", "WorkerConfig", "WorkerState"]

log = logging.getLogger(__name__)

# Once the process is declared dead, running jobs get this long to fail on their own (with their own error,
# which names the cause more precisely) before they are failed with the reason.
DEAD_GRACE_S = 2.0


@dataclass(slots=True, eq=False)
class _Running:
    assignment: Assignment
    job: Job
    task: asyncio.Task[None] | None = None
    sender: StreamSink | None = None
    ticket: Ticket | None = None  # its place in a batch, for a batched handler


async def _no_stream(item: Any) -> None:
    raise AssertionError("a handler that returns emitted a stream item")


class Worker:
    def __init__(
        self,
        h: Handler,
        transport: Transport,
        config: WorkerConfig | None = None,
        *,
        pool: ElasticPool | None = None,
    ) -> None:
        self.h = h
        self.t = transport
        self.cfg = config or WorkerConfig()
        self.pool = pool or ElasticPool()
        self.state = WorkerState.INITIALIZING
        self.limit = h.concurrency
        self.running: dict[str, _Running] = {}
        self.refresh = False
        self.setup_state: Any = None
        self.reporter = Reporter(transport, self.cfg)
        self.pump = TakePump(transport, self.cfg, self)
        self.progress = Progress(transport, self.cfg.progress_interval_s, self.running.__contains__)
        self._stopping = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._streams = h.kind.streams
        self._pusher: Pushing | None = None
        # A batched handler's jobs run through the batcher; concurrency (and its modifier) then counts batches.
        self._batcher = (
            Batcher(h, self.pool, limit=lambda: self.limit, result_cap=self.cfg.result_cap) if h.batched else None
        )
        self.dead: str | None = None
        self._pinger: asyncio.Task[None] | None = None

    @property
    def spool(self) -> Spool | None:
        return self.reporter.spool

    # --- public ----------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Begin draining: take nothing more, let running jobs finish until the drain deadline."""
        if self.state in (WorkerState.DRAINING, WorkerState.STOPPED):
            return
        log.info("worker %s draining (%d running)", self.t.worker_id, len(self.running))
        self.state = WorkerState.DRAINING
        self._stopping.set()
        self.pump.wake()

    def die(self, reason: str) -> None:
        """The process can serve no further job: take nothing more, stop pinging, fail the running jobs with
        ``reason`` (after DEAD_GRACE_S to fail on their own), and make ``run`` raise WorkerDead."""
        if self.dead is not None:
            return
        log.error("worker %s cannot go on: %s; failing %d running job(s) and exiting", self.t.worker_id, reason,
                  len(self.running))  # fmt: skip
        self.dead = reason
        if self._pinger is not None:
            self._pinger.cancel()
        self.stop()

    async def run(self) -> None:
        """Run until stopped (or a job asks for a refresh). Raises SetupError if the setup hook fails."""
        self.progress.loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tg:
                self._pinger = tg.create_task(
                    ping_loop(self.t, self.cfg, self.job_ids, lambda: self.state is WorkerState.INITIALIZING),
                    name="ping",
                )
                background = [self._pinger]
                await self._setup()
                self.state = WorkerState.READY if self.state is WorkerState.INITIALIZING else self.state
                background += [
                    tg.create_task(stop_loop(self.t, self.cfg, self.cancel), name="job-stop"),
                    tg.create_task(self.progress.run(), name="progress"),
                ]
                if self.spool is not None:
                    background.append(tg.create_task(self.reporter.spool_loop(), name="spool"))
                until_dead = getattr(self.setup_state, "until_dead", None)
                if callable(until_dead):
                    background.append(tg.create_task(self._watch(until_dead), name="until-dead"))
                self._tg = tg
                if isinstance(self.t, Pushing):
                    await self._pushed(self.t)
                else:
                    await self.pump.run(tg)
                await self._drain()
                for b in background:
                    b.cancel()
        except BaseExceptionGroup as eg:
            setup = eg.subgroup(SetupError)
            if setup is not None:
                raise setup.exceptions[0] from None
            raise
        finally:
            self.state = WorkerState.STOPPED
            self.pool.shutdown()
        if self.dead is not None:
            raise WorkerDead(self.dead)

    async def _watch(self, until_dead: Any) -> None:
        try:
            reason = await until_dead()
        except Exception:  # a broken watch must not take the worker down with it
            log.exception("the setup state's until_dead() raised; no longer watching it")
            return
        self.die(str(reason))

    # --- setup -----------------------------------------------------------------------------------------------

    async def _setup(self) -> None:
        if self.h.checks:
            await run_checks(self.h.checks, self.pool)
            if self.h.setup is None:
                with contextlib.suppress(TransportError):
                    await self.t.ping(list(self.running), initializing=False)
        if self.h.setup is None:
            return
        log.info("running setup hook %s", getattr(self.h.setup, "__qualname__", self.h.setup))
        try:
            if inspect.iscoroutinefunction(self.h.setup):
                self.setup_state = await self.h.setup()
            else:
                self.setup_state = await self.pool.run(self.h.setup)
        except Exception as e:
            raise SetupError(f"setup hook failed: {type(e).__name__}: {e}") from e
        after_setup()
        with contextlib.suppress(TransportError):
            await self.t.ping(list(self.running), initializing=False)
        log.info("setup hook finished; taking jobs")

    # --- taking ----------------------------------------------------------------------------------------------

    def _apply_modifier(self) -> None:
        self.limit = modified_limit(self.h.concurrency_modifier, self.limit)

    # TakeHost, for the pump.

    def taking(self) -> bool:
        return self.state is WorkerState.READY

    def room(self) -> int:
        self._apply_modifier()
        return self._room()

    def busy(self) -> bool:
        return bool(self.running) or self.reporter.holding()

    def start_all(self, jobs: list[Assignment]) -> None:
        assert self._tg is not None
        for a in jobs:
            self._start(self._tg, a)

    async def refuse(self, jobs: list[Assignment]) -> None:
        """Jobs a take brought back after the process was declared dead: hand them back, or fail them."""
        if not jobs:
            return
        if self.t.can_hand_back:
            with contextlib.suppress(TransportError):
                await self.t.hand_back([a.id for a in jobs])
                return
        for a in jobs:
            await self.reporter.report(a.id, self._dead_outcome())

    async def _pushed(self, pusher: Pushing) -> None:
        """Jobs arrive through ``_start_all`` while we are attached; nothing to do here but wait for the stop."""
        self._pusher = pusher
        pusher.attach(self._free, self.start_all)
        try:
            await self._stopping.wait()
        finally:
            pusher.detach()
            self._pusher = None

    def _free(self) -> int:
        if self.state is not WorkerState.READY:
            return 0
        if self.h.concurrency_modifier is not None:
            self._apply_modifier()
        return max(0, self._room())

    def _room(self) -> int:
        """Jobs to take now: free slots, or for a batched handler the room in the batches that could start."""
        if self._batcher is not None:
            return self._batcher.free()
        return self.limit - len(self.running)

    async def sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    def _start(self, tg: asyncio.TaskGroup, a: Assignment) -> None:
        job = Job(
            a.raw, input=a.input, state=self.setup_state, on_progress=functools.partial(self.progress.update, a.id)
        )
        rj = _Running(a, job)
        self.running[a.id] = rj
        if self._batcher is not None and a.ready is None:
            rj.ticket = self._batcher.add(job, self._timeout_for(a))
        rj.task = tg.create_task(self._run_one(rj), name=f"job-{a.id}")

    # --- running one job -------------------------------------------------------------------------------------

    def _timeout_for(self, a: Assignment) -> float | None:
        mine = self.h.timeout
        if mine is None or a.timeout_s is None:
            return a.timeout_s if mine is None else mine
        return min(mine, a.timeout_s)

    async def _run_one(self, rj: _Running) -> None:
        a = rj.assignment
        # Set in this job's own task context (a copy made for the task), so every line logged for the job, in its
        # handler's threads too, carries its trace (if it has one), and no other job's does.
        trace.current.set(rj.job.trace)
        log.debug("job %s started", a.id)
        sender = self._sender(a.id) if self._streams else None  # only for yielded items; most handlers return
        rj.sender = sender
        reporting = False
        try:
            if a.ready is not None:
                await a.ready()  # a re-run: its attempt is journaled first, then it may join a batch
                if self._batcher is not None:
                    rj.ticket = self._batcher.add(rj.job, self._timeout_for(a))
            if rj.ticket is not None and self._batcher is not None:
                outcome = await self._batcher.result(rj.ticket)
            else:
                outcome = await run_job(
                    self.h, rj.job, emit=_no_stream if sender is None else sender.emit, pool=self.pool,
                    timeout=self._timeout_for(a), result_cap=self.cfg.result_cap,
                )  # fmt: skip
            if outcome.refresh_worker:
                # Stop taking before this slot frees, or a queued job would start on the worker being replaced.
                log.info("job %s asked for refresh_worker: restarting the worker after it", a.id)
                self.refresh = True
                self.stop()
            if sender is not None:
                flushed = await self._flush(sender, outcome)
                if flushed is None:
                    return
                outcome = flushed
            reporting = True
        except asyncio.CancelledError:
            stopped = self._stopped(a.id, sender)
            if stopped is None:
                return
            outcome, reporting = stopped, True
        finally:
            self.running.pop(a.id, None)
            self.progress.discard(a.id)
            if self._pusher is None:
                self.pump.wake()
            elif not reporting:
                # (A pushing transport runs no pump.) With a result to report, done() offers the slot once the
                # result is recorded: the next job must not start (by the endpoint's clock) before this one ended.
                self._pusher.slot_freed()
        self._note(a.id, outcome)
        await self.reporter.deliver(a.id, outcome)

    def _sender(self, job_id: str) -> StreamSink:
        """The job's stream on the transport's multiplexer when it has one (every job's items in one request),
        else a sender of the job's own."""
        retries, backoff = self.cfg.report_retries, self.cfg.backoff_base_s
        if isinstance(self.t, Multiplexing):
            sink = self.t.open_stream(job_id, retries=retries, backoff_s=backoff)
            if sink is not None:
                return sink
        return StreamSender(self.t, job_id, retries=retries, backoff_s=backoff)

    def _stopped(self, job_id: str, sender: StreamSink | None) -> Outcome | None:
        """A job's task was cancelled: no report (None), unless the worker died, which fails the job."""
        if sender is not None:
            sender.abort()
        if self.dead is None:
            # Stopped by the endpoint (cancel/timeout there) or handed back at a drain deadline: no report.
            log.info("job %s stopped", job_id)
            return None
        return self._dead_outcome()

    def _dead_outcome(self) -> Outcome:
        err = WorkerDead(self.dead or "the worker died")
        return Outcome(JobStatus.FAILED, error=f"WorkerDead: {err}", error_details=error_details(err, tb=False))

    def _note(self, job_id: str, outcome: Outcome) -> None:
        # A job that raised WorkerDead takes the worker with it (no await since its slot freed: nothing was taken).
        if outcome.error_details is not None and outcome.error_details.get("error_type") == "WorkerDead":
            self.die(str(outcome.error_details.get("error_message") or outcome.error))
        if outcome.error_details is not None:
            outcome.error_details["worker_id"] = self.t.worker_id
            outcome.error_details["hostname"] = self.cfg.hostname
        # Success is the hot path (one line per job costs ~10% of a no-op job's time); failures always log.
        # (The status itself, a StrEnum that prints as its value: .value is a descriptor call, paid even unlogged.)
        if outcome.error is None:
            log.debug("job %s %s", job_id, outcome.status)
        else:
            log.info("job %s %s: %s", job_id, outcome.status, outcome.error)

    async def _flush(self, sender: StreamSink, outcome: Outcome) -> Outcome | None:
        """Deliver the job's last stream items; None when the endpoint has stopped the job meanwhile."""
        try:
            await sender.flush()
        except StaleResult:
            log.info("job %s was stopped by the endpoint while streaming", sender.job_id)
            return None
        except TransportError as e:
            return Outcome(outcome.status.FAILED, error=f"TransportError: stream items undeliverable: {e}",
                           error_details=error_details(e, tb=False))  # fmt: skip
        return outcome

    # --- heartbeat and stop ----------------------------------------------------------------------------------

    def job_ids(self) -> list[str]:
        return [*self.running, *self.reporter.reporting, *self.reporter.spooled]

    def cancel(self, job_id: str) -> bool:
        rj = self.running.get(job_id)
        if rj is None or rj.task is None:
            return False
        rj.job._mark_cancelled()
        rj.task.cancel()
        return True

    # --- drain -----------------------------------------------------------------------------------------------

    async def _drain(self) -> None:
        if self._batcher is not None:
            self._batcher.flush()  # nothing more will be taken: a batch waiting to fill would wait in vain
        if self.running:
            tasks = [rj.task for rj in self.running.values() if rj.task is not None]
            timeout = self.cfg.drain_timeout_s if self.dead is None else DEAD_GRACE_S
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending and self.dead is not None:
                for job_id in [job_id for job_id, rj in self.running.items() if rj.task in pending]:
                    self.cancel(job_id)  # each reports FAILED with the reason
                await asyncio.wait(pending)
            elif pending:
                ids = [job_id for job_id, rj in self.running.items() if rj.task in pending]
                log.warning("drain deadline reached; handing back %d unfinished job(s): %s", len(ids), ids)
                # Still ours until handed back: a ping without them would say they were lost.
                self.reporter.reporting.update(ids)
                for job_id in ids:
                    self.cancel(job_id)
                await asyncio.wait(pending)
                if self.t.can_hand_back:
                    with contextlib.suppress(TransportError):
                        await self.t.hand_back(ids)
                self.reporter.reporting.difference_update(ids)
