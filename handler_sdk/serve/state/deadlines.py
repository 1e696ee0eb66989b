"""When each job's deadlines come due: ttl, the execution backstop and out-of-order expiries, in a heap.

A finished job's retention is kept by ``archive.py`` (``Retained``: one FIFO of ids per retention, in the order the
jobs ended); only an expiry that cannot go there in order (the clock stepped back, a lowered retention, a job read
back from disk) comes here. It only keeps time: the broker asks what is due and applies it, so a deadline is checked
against the record as it is then (a /retry or a new lease makes an older deadline stale, recognised by the stamp in
its entry).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from ...models import JobStatus
from .finished import Finished
from .record import JobRecord

__all__ = ["Deadlines"]


class Deadlines:
    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        # (due, tie-break, kind, job id, the lease's start): kind is "ttl", "exec" or "expire".
        self._heap: list[tuple[int, int, str, str, int]] = []
        self._seq = itertools.count()

    def at(self, when: int, kind: str, r: JobRecord) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, r.id, r.started or 0))

    def due(
        self, now: int, jobs: dict[str, JobRecord | Finished]
    ) -> Iterator[tuple[str, JobRecord | Finished, str | None]]:
        """What the heap's entries due by ``now`` ask for, each removed as it is handed out (an entry pushed
        meanwhile that is due too): ``(id, record, None)`` to expire it, ``(id, record, why)`` to time it out. A
        stale entry (its job gone or ended, or from before a /retry or an earlier lease) asks for nothing."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, kind, job_id, started = heapq.heappop(heap)
            r = jobs.get(job_id)
            if r is None:
                continue
            if kind == "expire":
                if r.expires is not None and r.expires <= now:
                    yield job_id, r, None
            elif r.status.terminal or not isinstance(r, JobRecord):
                continue
            elif kind == "ttl" and r.ttl_due == when:
                yield job_id, r, f"job exceeded its ttl of {r.ttl} ms"
            elif kind == "exec" and r.status is JobStatus.IN_PROGRESS and r.started == started:
                yield job_id, r, f"job exceeded its executionTimeout of {r.execution_timeout} ms"
