"""What the passing of time sets off in the broker: deadlines that came due and remote workers that fell silent.

Nobody calls for these: a queued job's ttl runs out, a running job passes its execution backstop (its worker
never reported), a finished job's retention ends (``archive.py``'s FIFOs, and the deadline heap for a clock that
stepped back), and a remote worker silent for longer than its lease has lapsed, its jobs lost with it. The ticker
finds what is due, every ``tick_s`` in the server's task group, and hands each to the broker's transitions: a
time-out is a finish like any other (journal, wake-ups, hooks, the next dispatch, in the broker's order), a lapsed
worker leaves as one that said goodbye does.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .record import JobRecord

if TYPE_CHECKING:
    from .broker import Broker

__all__ = ["Ticker"]


class Ticker:
    __slots__ = ("_last_reap", "b")

    def __init__(self, broker: Broker) -> None:
        self.b = broker
        self._last_reap = 0

    def expire_due(self) -> None:
        """Apply every deadline that has passed: ttl, the execution backstop, and retention."""
        b = self.b
        now = b.clock()
        b.retained.expire(now)
        for job_id, r, timed_out in b.deadlines.due(now, b.jobs):
            if timed_out is None:
                b._expire(r, job_id)
            elif isinstance(r, JobRecord):
                b.time_out(r, timed_out)

    def reap(self) -> None:
        """Remote workers silent for longer than their lease are gone."""
        b = self.b
        for worker_id in b.leases.lapsed(b.clock(), b.cfg.lease_ms):
            b.leave(worker_id)

    async def run(self) -> None:
        """The background ticker; run it in the server's task group."""
        cfg = self.b.cfg
        while True:
            await asyncio.sleep(cfg.tick_s)
            self.expire_due()
            now = self.b.clock()
            if now - self._last_reap >= cfg.lease_ms // 4:
                self._last_reap = now
                self.reap()
