"""The workers seen, what each holds (its lease on its jobs) and what each must stop.

A worker's lease is renewed by any of its calls (``seen``); one silent for ``lease_ms`` has lapsed. This module
says which jobs a worker lost; the broker requeues them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ...models import JobStatus
from .finished import Finished
from .record import JobRecord

__all__ = ["Leases", "LocalWorker", "WorkerSeen"]

S = JobStatus


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

    def wake(self) -> None:
        """Answer its held job-stop request now."""
        if self.stop_waiter is not None and not self.stop_waiter.done():
            self.stop_waiter.set_result(None)


class Leases:
    __slots__ = ("workers",)

    def __init__(self) -> None:
        self.workers: dict[str, WorkerSeen] = {}

    def seen(self, worker_id: str, now: int, *, local: bool = False, initializing: bool | None = None) -> WorkerSeen:
        """The worker has called: its lease runs from ``now``."""
        w = self.workers.get(worker_id)
        if w is None:
            w = self.workers[worker_id] = WorkerSeen(worker_id, now, local=local)
        else:
            w.last_seen = now
        if initializing is not None:
            w.initializing = initializing
        return w

    def release(self, r: JobRecord) -> None:
        """The job left its worker (it ended, or queues again)."""
        if r.worker_id is not None and (w := self.workers.get(r.worker_id)) is not None:
            w.jobs.discard(r.id)

    def stop(self, r: JobRecord) -> None:
        """Tell the job's worker to stop it (cancelled or timed out here)."""
        if r.worker_id is not None and (w := self.workers.get(r.worker_id)) is not None:
            w.stops.add(r.id)
            w.wake()

    def lapsed(self, now: int, lease_ms: int) -> list[str]:
        """Remote workers silent for longer than their lease (the in-process worker holds none)."""
        return [w.id for w in self.workers.values() if not w.local and now - w.last_seen > lease_ms]

    @staticmethod
    def unnamed(w: WorkerSeen, job_ids: Sequence[str], jobs: dict[str, JobRecord | Finished]) -> list[str]:
        """A ping's verdict: the jobs leased to ``w`` before its previous ping and missing from this one were lost
        (its process restarted under the same id). One whole ping interval of grace, because the runpod worker
        pings from a separate process whose job list lags fresh takes."""
        previous, w.pinged = w.pinged, w.last_seen
        if previous is None or not w.jobs:
            return []
        named = set(job_ids)
        return [j for j in w.jobs if j not in named and (r := jobs.get(j)) is not None and (r.started or 0) < previous]

    @staticmethod
    def restop(w: WorkerSeen, job_ids: Sequence[str], jobs: dict[str, JobRecord | Finished]) -> None:
        """A worker still running a job it no longer holds (cancelled, timed out, or leased to another) is told to
        stop it again: the runpod worker drops a stop that reaches it before the job's task exists."""
        for job_id in job_ids:
            r = jobs.get(job_id)
            if r is not None and (
                r.status in (S.CANCELLED, S.TIMED_OUT) or (not r.status.terminal and r.worker_id != w.id)
            ):
                w.stops.add(job_id)
        if w.stops:
            w.wake()

    @staticmethod
    async def stops(w: WorkerSeen, wait: float) -> list[str]:
        """The jobs ``w`` must stop, holding an empty answer up to ``wait`` s."""
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
