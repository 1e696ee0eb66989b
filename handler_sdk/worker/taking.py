"""The take pump: asks the endpoint for jobs whenever the worker has free slots, and hands them to the worker.

Over our endpoint (``take-pipeline`` announced) up to ``PIPELINE`` takes are in flight at once, each for a share
of the slots: while the jobs of one take run, the next take is already on its way, so the worker never waits a
full round trip (and the endpoint's work on the take) between one batch and the next. The slots a take asks for
are reserved until it returns: running jobs plus reserved slots never exceed the worker's limit, so no take
brings a job the worker has no slot for.

Against any other endpoint one take is in flight at a time, as runpod's own worker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import TransportError
from .options import WorkerConfig
from .transport import Assignment, Pipelining, Transport

__all__ = ["PIPELINE", "TakeHost", "TakePump", "modified_limit"]

log = logging.getLogger(__name__)

# Takes in flight at once over our endpoint: two keep one batch running while the next is fetched; more would
# only split the slots into smaller batches (more requests per job) without shortening the wait.
PIPELINE = 2


def modified_limit(modifier: Callable[[int], Any] | None, limit: int) -> int:
    """The limit the handler's ``concurrency_modifier`` asks for, asked before each take; a result that is not an
    int >= 1, or an exception, keeps ``limit``."""
    if modifier is None:
        return limit
    try:
        new = modifier(limit)
    except Exception:
        log.exception("concurrency modifier raised; keeping concurrency %d", limit)
        return limit
    if not isinstance(new, int) or isinstance(new, bool) or new < 1:
        log.error("concurrency modifier returned %r, not an int >= 1; keeping %d", new, limit)
        return limit
    if new != limit:
        log.info("concurrency %d -> %d", limit, new)
    return new


class TakeHost(Protocol):
    """What the pump needs from the worker."""

    limit: int
    dead: str | None

    def taking(self) -> bool:
        """Whether the worker still takes jobs (ready, not draining)."""
        ...

    def room(self) -> int:
        """Jobs the worker could start now (free slots, or room in the batches that could start)."""
        ...

    def busy(self) -> bool:
        """Whether the worker holds any job (running, reporting, spooled): sent as ``job_in_progress``."""
        ...

    def start_all(self, jobs: list[Assignment]) -> None: ...

    async def refuse(self, jobs: list[Assignment]) -> None:
        """Jobs taken after the process was declared dead."""
        ...

    async def sleep_unless_stopping(self, seconds: float) -> None: ...


class TakePump:
    def __init__(self, transport: Transport, config: WorkerConfig, host: TakeHost) -> None:
        self.t = transport
        self.cfg = config
        self.host = host
        self.reserved = 0  # slots asked for by the takes in flight
        self._takes: set[asyncio.Task[None]] = set()
        # A take that says job_in_progress=0 is in flight: the endpoint then requeues whatever it has leased to
        # this worker id, so no other take may be in flight with it (its jobs would be requeued).
        self._unbusy = False
        self._wake = asyncio.Event()
        self._delay = config.backoff_base_s
        self.takes = 0  # takes sent, for tests and diagnostics
        self.most_in_flight = 0
        # Asked once: a runtime protocol check costs microseconds, and the pump looks at each freed slot.
        self._pipe: Pipelining | None = transport if isinstance(transport, Pipelining) else None
        # depth() as the pump's last turn found it, for wake (called for every job that ends). A depth that grew
        # since was learned from a take's reply, whose return wakes the pump anyway.
        self._depth = 1

    def wake(self) -> None:
        """A slot freed (or the worker is stopping): look again. Not while every take that may be in flight is:
        nothing can be sent until one returns, and its return wakes the pump (``_took``); a wake per finished job
        cost the pump a turn and a timer each."""
        if len(self._takes) < self._depth or not self.host.taking():
            self._wake.set()

    def depth(self) -> int:
        if (pipe := self._pipe) is not None and (most := pipe.takes_in_flight) > 1 and self.host.limit > 1:
            return min(most, PIPELINE, self.host.limit)
        return 1

    def in_flight(self) -> int:
        return len(self._takes)

    async def run(self, tg: asyncio.TaskGroup) -> None:
        """Take until the worker stops taking (each take a task of ``tg``: a bug in one fails the worker); then
        wait for the takes in flight and start (or refuse) their jobs, so none is left leased and never run."""
        while self.host.taking():
            free = self.host.room() - self.reserved
            depth = self._depth = self.depth()
            if free <= 0 or len(self._takes) >= depth or self._unbusy:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):  # re-ask the modifier now and then
                        await self._wake.wait()
                continue
            # Each take in the pipeline asks for its share of the slots; one take alone asks for all.
            n = free if depth == 1 else min(free, -(-self.host.limit // depth))
            # busy: the endpoint reads "nothing in progress" as "this worker id lost its jobs" (a restart).
            busy = self.host.busy() or bool(self._takes)
            self._unbusy = not busy
            self.reserved += n
            task = tg.create_task(self._take(n, busy), name="job-take")
            self._takes.add(task)
            self.takes += 1
            self.most_in_flight = max(self.most_in_flight, len(self._takes))
            task.add_done_callback(self._took)
        # Not on cancellation: the takes are tasks of the worker's group, cancelled with it.
        if self._takes:
            await asyncio.gather(*self._takes)

    def _took(self, task: asyncio.Task[None]) -> None:
        self._takes.discard(task)
        self._wake.set()

    async def _take(self, n: int, busy: bool) -> None:
        held = n
        try:
            asked = asyncio.get_running_loop().time()
            try:
                jobs = await self.t.take(n, busy=busy)
            except TransportError as e:
                # Not "job take failed": JSON logs read the word after "job " as a job id.
                log.warning("taking jobs failed (%s); retrying in %.2fs", e, self._delay)
                await self._back_off(self.cfg.take_backoff_max_s)
                return
            if not jobs and not self.t.direct and asyncio.get_running_loop().time() - asked < self.cfg.backoff_base_s:
                # Nothing, at once: a server that does not hold takes open. Re-asking at once would spin.
                await self._back_off(min(self.cfg.backoff_max_s, 1.0))
                return
            self._delay = self.cfg.backoff_base_s
            # Released before the jobs start: they take their slots in the same step, so the sum stays exact.
            self.reserved -= held
            held = 0
            if self.host.dead is not None:
                await self.host.refuse(jobs)
                return
            self.host.start_all(jobs)
        finally:
            self.reserved -= held
            if not busy:
                self._unbusy = False

    async def _back_off(self, cap: float) -> None:
        await self.host.sleep_unless_stopping(self._delay * random.uniform(0.5, 1.5))
        self._delay = min(self._delay * 2, cap)
