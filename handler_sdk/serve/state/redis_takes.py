"""A worker's take on the Redis engine, and how a held take waits for work: a queued job wakes one taker.

A held take whose script left the queue empty makes its worker idle in Redis (``take.lua``: the ``idle`` set, with
this replica's wake channel and its free slots), in the script that found the queue empty. The script that queues
work (submit, a requeue, /retry) pops the taker idle longest and publishes the worker's id on its replica's own
channel (``wake:<tag>``); PUBLISH's count of subscribers tells a gone replica, whose taker is skipped for the next.
It wakes another only while the queue holds more jobs than the takers woken and not yet asking have free slots
for (``awake``), so a burst wakes one taker with room for it all, or one per job for single-slot workers; a take
that fills its slots with work still queued wakes the next. So a job costs one take however many replicas are
idle, and waiting stays push: no Redis call while a take waits.

A woken taker leaves ``idle``: its take asks Redis again, and either leases the job or, finding the queue empty,
is idle again. A wake that reaches this replica and cannot be used here goes on to the next idle taker (``wake.lua``,
while work is still queued): no take of that worker is waiting (its hold just ended, it hung up), the woken take
filled its slots with other jobs, the replica is shutting down, or the worker is between takes with a parked watch
(below). A replica killed mid-wake leaves that one job to the next take anyone sends (each held take asks again
when its hold ends, and the dead worker's lease lapses).

A take that got jobs but fewer than it asked for left the queue empty; a worker takes again as soon as those jobs
start, so its watch is parked for that next take, which waits without first asking Redis unless something came
in since (a wake is never kept on a parked watch: it is passed on, and the next take asks). A worker that takes
through another replica meanwhile (behind a load balancer) is idle there, or not at all: that take's script tells
this replica (``d <worker>``), which drops the parked watch, so the worker's next take here asks Redis. So does
the lapse of the worker's lease (silent past ``lease_ms``), which leaves it idle no more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ...errors import StoreError
from .changes import LOST, ChangeFeed, Watch
from .redis_records import RedisJobsConfig, Taken

__all__ = ["Takes"]

log = logging.getLogger("handler_sdk.serve")

# What a take's watch sees for a wake addressed to its worker.
WAKE = "wake"


def _key(worker_id: str) -> str:
    return "t:" + worker_id


class Takes:
    """One replica's takes; ``tag`` names its wake channel (``<prefix>wake:<tag>``, subscribed by ``feed``)."""

    def __init__(
        self,
        call: Callable[..., Awaitable[Any]],
        feed: ChangeFeed,
        cfg: RedisJobsConfig,
        tag: str,
        closing: Callable[[], bool],
    ) -> None:
        self._call = call
        self.feed = feed
        self.cfg = cfg
        self.tag = tag
        self._closing = closing
        # Per worker: the watch of its last take, parked when that take emptied the queue (see take).
        self._parked: dict[str, tuple[Watch, float]] = {}
        self._passing: set[asyncio.Task[None]] = set()
        self.passed = 0  # wakes this replica passed on (tests)

    async def take(self, worker_id: str, n: int, wait: float = 0.0) -> list[Taken]:
        """Lease up to ``n`` queued jobs, holding an empty take open up to ``wait`` s until a job is queued for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        parked = self._parked.pop(worker_id, None)
        w = parked[0] if parked is not None else self.feed.watch(_key(worker_id))
        ask = parked is None or wait <= 0 or bool(w.seen)
        held, keep = False, False
        try:
            while True:
                if self._closing():
                    return []
                # Idle only while it will wait: the ask after the hold ended leaves the worker idle no more.
                held = loop.time() < deadline
                reply = (
                    await self._call(
                        "take", worker_id, n, self.cfg.lease_ms, self.cfg.execution_grace_ms, self.tag, int(held)
                    )
                    if ask
                    else []
                )
                ask = True
                remaining = deadline - loop.time()
                # An empty ask that made the worker idle but ended past the deadline (a slow round trip) asks once
                # more, unheld: a take never returns with its worker left idle.
                if reply or (remaining <= 0 and not held):
                    keep = held and 0 < len(reply) < n and WAKE not in w.seen
                    if keep:
                        self._park(worker_id, w, loop.time())
                    return [Taken(i.decode(), inp, int(ex) if ex else None, meta or None) for i, inp, ex, meta in reply]
                if remaining > 0:
                    await w.changes(remaining)
        finally:
            if not keep:
                self.feed.forget(w)
                # Wakes that came after this take's last ask: meant for an idle taker, which this one is not now.
                if WAKE in w.seen:
                    self._pass_on(worker_id)

    def message(self, data: str) -> None:
        """A message on this replica's channel: ``w <worker>``, work was queued for it; ``d <worker>``, it is idle
        here no more (it became idle through another replica, or its lease lapsed)."""
        kind, _, worker_id = data.partition(" ")
        if kind == "w":
            self.woken(worker_id)
        elif kind == "d":
            parked = self._parked.pop(worker_id, None)
            if parked is not None:
                self.feed.forget(parked[0])
            else:  # a take that began on the watch before this came: it asks Redis again
                self.feed.push(_key(worker_id), LOST)

    def woken(self, worker_id: str) -> None:
        """A script woke ``worker_id`` on this replica's channel: work was queued for it."""
        parked = self._parked.pop(worker_id, None)
        if parked is not None:
            # Between takes, maybe with no free slot for a while: the wake goes on; its next take asks Redis.
            self.feed.forget(parked[0])
            self._pass_on(worker_id)
        elif self._closing() or not self.feed.push(_key(worker_id), WAKE):
            self._pass_on(worker_id)

    def _pass_on(self, worker_id: str) -> None:
        self.passed += 1
        t = asyncio.get_running_loop().create_task(self._wake(worker_id))
        self._passing.add(t)
        t.add_done_callback(self._passing.discard)

    async def _wake(self, worker_id: str) -> None:
        try:
            await self._call("wake", worker_id)
        except StoreError as e:  # Redis is down: every take asks again once the feed is back (it wakes them all)
            log.warning("could not pass on the wake-up of %s: %s", worker_id, e)

    def _park(self, worker_id: str, w: Watch, now: float) -> None:
        self.sweep(now)
        self._parked[worker_id] = (w, now)

    def sweep(self, now: float) -> None:
        """A watch parked longer than a lease is dropped (its worker is gone, or took again and replaced it), so no
        watch collects messages for long."""
        for k in [k for k, (_, t) in self._parked.items() if now - t > self.cfg.lease_ms / 1000]:
            self.feed.forget(self._parked.pop(k)[0])

    def leave(self, worker_id: str) -> None:
        parked = self._parked.pop(worker_id, None)
        if parked is not None:
            self.feed.forget(parked[0])

    async def close(self) -> None:
        """Forget the parked watches, and let the wakes being passed on reach Redis."""
        for w, _ in self._parked.values():
            self.feed.forget(w)
        self._parked.clear()
        if self._passing:
            await asyncio.gather(*self._passing, return_exceptions=True)
