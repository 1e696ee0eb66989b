"""Finished jobs during their retention: in memory up to a bound, on disk past it (``--max-retained-mb``).

Every job that ends is kept for its retention (30 minutes for /run, a minute for /runsync) so that /status can
answer for it. ``Retained`` keeps them in one FIFO of ids per retention, in the order they ended (one retention's
records expire in that order), packed into their compact form (``finished.py``) and counted in estimated bytes.
Past ``max_retained_bytes`` the oldest (the FIFOs' fronts) leave memory: a /run job's row is in the journal already,
a /runsync job's is written there first. A job missing from memory is then read back from the store (one indexed
SELECT in the store's thread, awaited) until its retention ends, and the store deletes such rows at their expiry
(its ``expires`` index, swept once a second from the broker's tick). Without a store nothing is evicted.

The jobs evicted stay in the broker's status counts (/health) until they expire: they are counted by the second
they expire in, not one by one. A start-up loads the newest finished jobs up to the same bound and counts the rest
the same way.

Everything here runs on the event loop but ``read``, which awaits the store's thread.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import TYPE_CHECKING

from ...models import JobStatus
from .finished import Finished, freeze, held_bytes, thaw
from .pending import DELETED
from .record import JobRecord

if TYPE_CHECKING:
    from .broker import Broker

__all__ = ["Retained"]

S = JobStatus
# How often the store is told to delete evicted rows past their expiry.
SWEEP_MS = 1000


class Retained:
    def __init__(self, broker: Broker, max_bytes: int) -> None:
        self.b = broker
        self.max_bytes = max_bytes
        # Estimated bytes that the finished records in memory hold (finished.held_bytes of each).
        self.bytes = 0
        self.evicted = 0
        # Ids by retention, in the order their jobs ended. An entry whose record is gone or runs again (a /retry)
        # is dropped when it reaches the front; a JobRecord counts its entries in ``retained_in``.
        self.fifos: dict[int, deque[str]] = {}
        # The latest end queued in each FIFO: an earlier one (the wall clock stepped back) also goes in the heap.
        self._last: dict[int, int] = {}
        # Some finished jobs live only in the store (evicted, or left there at start-up): reads fall back to it.
        self.on_disk = False
        # Jobs on disk only, counted by the second they expire in: (second, status) -> n, and a heap of seconds.
        self._gone: dict[int, dict[JobStatus, int]] = {}
        self._gone_at: list[int] = []
        self._swept = 0

    # --- entering and leaving ------------------------------------------------------------------------------

    def add(self, r: JobRecord) -> None:
        """A record that ended (or was loaded finished, or came back from disk): queued for its expiry, packed
        into its compact form when it can be, and the oldest evicted past the bound."""
        assert r.ended is not None
        if self.b.jobs.get(r.id) is not r:
            return  # not held (purged meanwhile): nothing to expire
        q = self.fifos.get(r.retention)
        if q is None:
            q = self.fifos[r.retention] = deque()
        if r.ended < self._last.get(r.retention, r.ended):
            self.b.deadlines.at(r.ended + r.retention, "expire", r)  # out of order, so the heap too
        else:
            self._last[r.retention] = r.ended
        q.append(r.id)
        r.retained_in += 1
        v: JobRecord | Finished = freeze(r) or r
        if v is not r:
            self.b.jobs[r.id] = v
        self.bytes += held_bytes(r.id, v)
        if self.bytes > self.max_bytes:
            self.evict()

    def forget(self, job_id: str, v: JobRecord | Finished) -> None:
        """A finished record leaves memory (expired)."""
        self.bytes -= held_bytes(job_id, v)

    def reopen(self, job_id: str) -> JobRecord:
        """A finished record that /retry queues again: the JobRecord in the jobs dict, no longer counted."""
        v = self.b.jobs[job_id]
        self.bytes -= held_bytes(job_id, v)
        r = thaw(job_id, v)
        self.b.jobs[job_id] = r
        return r

    def recount(self, r: JobRecord) -> None:
        """A /retry undone (the journal refused it): the record is finished again, as it was."""
        self.bytes += held_bytes(r.id, r)

    def thaw(self, job_id: str) -> JobRecord:
        """The record itself, whole, for a change that keeps it finished (a lowered retention)."""
        v = self.b.jobs[job_id]
        if not isinstance(v, Finished):
            return v
        r = v.thaw(job_id)
        self.b.jobs[job_id] = r
        self.bytes += held_bytes(job_id, r) - held_bytes(job_id, v)
        return r

    def refreeze(self, r: JobRecord) -> None:
        """A thawed record changed and still finished: packed again."""
        v = freeze(r)
        if v is not None and self.b.jobs.get(r.id) is r:
            self.b.jobs[r.id] = v
            self.bytes += held_bytes(r.id, v) - held_bytes(r.id, r)

    # --- time ----------------------------------------------------------------------------------------------

    def expire(self, now: int) -> None:
        jobs = self.b.jobs
        for q in self.fifos.values():
            while q:
                job_id = q[0]
                v = jobs.get(job_id)
                if v is None:
                    q.popleft()  # gone already (evicted, purged, or an earlier deadline)
                    continue
                if isinstance(v, Finished):
                    if v.expires > now:
                        break
                    q.popleft()
                    self.b._expire(v, job_id)
                    continue
                due = v.expires
                live = v.retained_in == 1 and v.status.terminal and due is not None
                if live and due is not None and due > now:
                    break  # the oldest record of this retention is not due yet
                q.popleft()
                v.retained_in -= 1
                # An entry from before a /retry (a later one exists, or the job runs again) is only dropped.
                if live and due is not None and due <= now:
                    self.b._expire(v, job_id)
        self._expire_gone(now)
        store = self.b.store
        if self.on_disk and store is not None and now - self._swept >= SWEEP_MS:
            self._swept = now
            store.sweep(now)

    def _expire_gone(self, now: int) -> None:
        counts = self.b.counts
        while self._gone_at and self._gone_at[0] * 1000 <= now:
            second = heapq.heappop(self._gone_at)
            for status, n in self._gone.pop(second, {}).items():
                counts[status] -= n

    def count_on_disk(self, status: JobStatus | None = None) -> int:
        """The finished jobs that live on disk only (with ``status``), as /health counts them."""
        return sum(n for per in self._gone.values() for st, n in per.items() if status is None or st is status)

    def _count_gone(self, status: JobStatus, expires: int, n: int) -> None:
        second = -(-expires // 1000)  # counted until the second after it expires begins
        per = self._gone.get(second)
        if per is None:
            per = self._gone[second] = {}
            heapq.heappush(self._gone_at, second)
        per[status] = per.get(status, 0) + n
        if per[status] == 0:
            del per[status]

    # --- the bound -----------------------------------------------------------------------------------------

    def evict(self) -> None:
        """Move the oldest finished records to the store until the rest fit the bound."""
        store = self.b.store
        if store is None:
            return
        jobs = self.b.jobs
        while self.bytes > self.max_bytes:
            q = self._oldest()
            if q is None:
                return
            job_id = q.popleft()
            v = jobs.get(job_id)
            if v is None:
                continue
            if isinstance(v, JobRecord):
                v.retained_in -= 1
                if v.retained_in != 0 or not v.status.terminal:
                    continue  # an entry from before a /retry
            if v.sync:
                store.archive(thaw(job_id, v))  # a /runsync job was never journaled: written before it leaves
            else:
                store.expire_at(job_id, v.expires or 0)  # its row is there: the sweep deletes it then
            del jobs[job_id]
            self.bytes -= held_bytes(job_id, v)
            self.evicted += 1
            self.on_disk = True
            self._count_gone(v.status, v.expires or 0, 1)

    def _oldest(self) -> deque[str] | None:
        best, when = None, 0
        for q in self.fifos.values():
            if q:
                v = self.b.jobs.get(q[0])
                ended = -1 if v is None or v.ended is None else v.ended
                if best is None or ended < when:
                    best, when = q, ended
        return best

    # --- start-up and read-back ----------------------------------------------------------------------------

    @staticmethod
    def loaded_size(r: JobRecord) -> int:
        """What a finished record read from the journal will hold once added (the store's open stops at the bound)."""
        if r.status in (S.COMPLETED, S.CANCELLED):
            r.input = None  # as when it ended: only /retry of a failed job reads it, and the journal has it
        r.retained_in += 1
        v = freeze(r) or r
        r.retained_in -= 1
        return held_bytes(r.id, v)

    def load(self, finished: list[JobRecord], left: list[tuple[str, int, int]]) -> None:
        """Finished records loaded at start-up, and (status, expires, n) of those the store kept on disk."""
        finished.sort(key=lambda r: r.ended or 0)
        for r in finished:
            if r.status in (S.COMPLETED, S.CANCELLED):
                r.input = None
            self.on_disk = self.on_disk or r.sync  # an archived /runsync job's row waits for the sweep
            self.add(r)
        for status, expires, n in left:
            self.b.counts[S(status)] += n
            self._count_gone(S(status), expires, n)
            self.on_disk = True

    async def read(self, job_id: str, *, stream: bool = False) -> JobRecord | None:
        """A finished job that lives only in the store, while its retention lasts (None: there is none)."""
        store = self.b.store
        if store is None or not self.on_disk:
            return None
        pending = store.pending(job_id)
        if pending is DELETED:
            return None
        r = pending if isinstance(pending, JobRecord) else await store.read(job_id, stream=stream)
        if (v := self.b.jobs.get(job_id)) is not None:
            return thaw(job_id, v)  # back in memory while we read (a /retry): that one is the truth
        if r is None or not r.status.terminal or r.expires is None or r.expires <= self.b.clock():
            return None
        return r

    async def by_key(self, key: str) -> JobRecord | None:
        """The job that an Idempotency-Key names, found through the store's key index when it left memory, while
        its retention lasts (None: there is none). A job back in memory meanwhile (a /retry) is that one."""
        store = self.b.store
        if store is None or not self.on_disk:
            return None
        r = await store.read_key(key)
        if r is None:
            return None
        if (v := self.b.jobs.get(r.id)) is not None:
            return thaw(r.id, v)
        if isinstance(pending := store.pending(r.id), JobRecord):
            r = pending
        if not r.status.terminal or r.expires is None or r.expires <= self.b.clock():
            return None
        return r

    def adopt(self, r: JobRecord) -> None:
        """A job read back from disk returns to memory (a /retry), as finished as it was on disk."""
        assert r.ended is not None
        self._count_gone(r.status, r.ended + r.retention, -1)
        self.b.jobs[r.id] = r
        q = self.fifos.setdefault(r.retention, deque())
        self.b.deadlines.at(
            r.ended + r.retention, "expire", r
        )  # older than the FIFO's tail: its heap deadline expires it
        q.append(r.id)  # (and _last stays: the tail's end is still the latest)
        r.retained_in += 1
        self.bytes += held_bytes(r.id, r)
        if r.sync and self.b.store is not None:
            self.b.store.delete([r.id])  # the archived row would outlive what the retry makes of the job

    def shorten(self, r: JobRecord, ttl: int) -> None:
        """/status?ttl= on a job that lives on disk: its row expires sooner."""
        assert r.expires is not None and self.b.store is not None
        self._count_gone(r.status, r.expires, -1)
        r.retention = ttl
        self._count_gone(r.status, r.expires, 1)
        self.b.store.rewrite(r)
