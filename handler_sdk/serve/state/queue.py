"""The jobs waiting for a worker, in order (the normal queue before lowPriority), and the takes waiting for one.

The queues hold ids and keep stale ones (a queued job that was cancelled, timed out or has expired): ``pop_many``
skips them, which costs less than finding and removing each when it leaves the queue.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable

from ...models import JobStatus
from .finished import Finished
from .record import JobRecord

__all__ = ["JobQueue"]

_QUEUED = JobStatus.IN_QUEUE


class JobQueue:
    __slots__ = ("_low", "_normal", "takers")

    def __init__(self) -> None:
        self._normal: deque[str] = deque()
        self._low: deque[str] = deque()
        # The held takes, longest waiting first (read by the broker, which wakes one only when there is one).
        self.takers: deque[asyncio.Future[None]] = deque()

    def __bool__(self) -> bool:
        return bool(self._normal or self._low)

    def add(self, r: JobRecord) -> None:
        """A new (or retried) job, at the back of its priority's queue."""
        (self._low if r.low_priority else self._normal).append(r.id)

    def put_back(self, r: JobRecord, *, front: bool = True) -> None:
        """A job that lost its worker: ahead of every new job (``front=False``: a restart's orphans keep their
        order)."""
        (self._normal.appendleft if front else self._normal.append)(r.id)

    def pop_many(self, jobs: dict[str, JobRecord | Finished], n: int) -> list[JobRecord]:
        """Up to ``n`` of the next jobs still queued, in order, off the queue (the stale ids before them too)."""
        taken: list[JobRecord] = []
        for q in (self._normal, self._low):
            while q and len(taken) < n:
                r = jobs.get(q.popleft())
                if type(r) is JobRecord and r.status is _QUEUED:
                    taken.append(r)
        return taken

    def queued(self, jobs: dict[str, JobRecord | Finished]) -> list[JobRecord]:
        """Every job still queued, each once (a job retried after timing out in the queue is listed twice)."""
        rs = (jobs.get(i) for i in itertools.chain(self._normal, self._low))
        return list({r.id: r for r in rs if isinstance(r, JobRecord) and r.status is _QUEUED}.values())

    def clear(self) -> None:
        self._normal.clear()
        self._low.clear()

    # --- takes waiting for work ----------------------------------------------------------------------------

    async def take(
        self,
        jobs: dict[str, JobRecord | Finished],
        n: int,
        wait: float,
        lease: Callable[[list[JobRecord]], None],
        gone: Callable[[], bool] | None,
    ) -> list[JobRecord]:
        """Up to ``n`` queued jobs, passed to ``lease`` together as they leave the queue, holding an empty take open
        up to ``wait`` s. ``gone`` says whether the taker has hung up meanwhile: it then takes nothing, and the job
        it was woken for goes to the next taker."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            if gone is not None and gone():
                if self:
                    self.wake()
                return []
            taken = self.pop_many(jobs, n)
            if taken:
                lease(taken)
            remaining = deadline - loop.time()
            if taken or remaining <= 0:
                if taken and self:
                    self.wake()  # more work than this taker took: let the next one at it
                return taken
            await self.wait(remaining)  # then one last look: a wake-up may have raced the timeout

    async def wait(self, timeout: float) -> None:
        """Wait until ``wake`` picks this take, or ``timeout`` s (no error: the caller looks again either way)."""
        f = asyncio.get_running_loop().create_future()
        self.takers.append(f)
        try:
            async with asyncio.timeout(timeout):
                await f
        except TimeoutError:
            pass
        finally:
            f.cancel()

    def wake(self) -> None:
        """Wake one waiting take (the longest waiting that is still there)."""
        while self.takers:
            f = self.takers.popleft()
            if not f.done():
                f.set_result(None)
                return
