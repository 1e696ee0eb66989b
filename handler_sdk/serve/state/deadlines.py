"""When each job's deadlines come due: ttl and the execution backstop in a heap, retention in FIFOs.

It only keeps time: the broker asks what is due and applies it, so a deadline is checked against the record as it
is then (a /retry or a new lease makes an older deadline stale, recognised by the stamp in its entry).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator

from ...models import JobStatus
from .record import JobRecord

__all__ = ["Deadlines"]


class Deadlines:
    __slots__ = ("_ending", "_heap", "_seq")

    def __init__(self) -> None:
        # (due, tie-break, kind, job id, the lease's start): kind is "ttl", "exec" or "expire".
        self._heap: list[tuple[int, int, str, str, int]] = []
        # Finished records by retention, in the order they ended: one retention's records expire in that order, so
        # a FIFO holds each at 8 bytes where a deadline heap entry cost ~170 (a 5-tuple and its ints).
        self._ending: dict[int, deque[JobRecord]] = {}
        self._seq = itertools.count()

    def at(self, when: int, kind: str, r: JobRecord) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, r.id, r.started or 0))

    def retain(self, r: JobRecord) -> None:
        """Queue a finished record for its expiry."""
        assert r.ended is not None
        q = self._ending.get(r.retention)
        if q is None:
            q = self._ending[r.retention] = deque()
        elif q and (last := q[-1].ended) is not None and r.ended < last:
            self.at(r.ended + r.retention, "expire", r)  # the clock stepped back: out of order, so the heap
            return
        q.append(r)
        r.retained_in += 1

    def expired(self, now: int) -> Iterator[JobRecord]:
        """The retained records whose retention has passed (each once), dropping entries made stale by a /retry."""
        for q in self._ending.values():
            while q:
                r = q[0]
                due = r.expires
                live = r.retained_in == 1 and r.status.terminal and due is not None
                if live and due is not None and due > now:
                    break  # the oldest record of this retention is not due yet
                q.popleft()
                r.retained_in -= 1
                # An entry from before a /retry (a later one exists, or the job runs again) is only dropped.
                if live and due is not None and due <= now:
                    yield r

    def due(self, now: int, jobs: dict[str, JobRecord]) -> Iterator[tuple[JobRecord, str | None]]:
        """What the heap's entries due by ``now`` ask for, each removed as it is handed out (an entry pushed
        meanwhile that is due too): ``(record, None)`` to expire it, ``(record, why)`` to time it out. A stale
        entry (its job gone or ended, or from before a /retry or an earlier lease) asks for nothing."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, kind, job_id, started = heapq.heappop(heap)
            r = jobs.get(job_id)
            if r is None:
                continue
            if kind == "expire":
                if r.expires is not None and r.expires <= now:
                    yield r, None
            elif r.status.terminal:
                continue
            elif kind == "ttl" and r.ttl_due == when:
                yield r, f"job exceeded its ttl of {r.ttl} ms"
            elif kind == "exec" and r.status is JobStatus.IN_PROGRESS and r.started == started:
                yield r, f"job exceeded its executionTimeout of {r.execution_timeout} ms"
