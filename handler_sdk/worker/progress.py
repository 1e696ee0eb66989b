"""Progress updates: a handler calls ``job.progress_update`` from any thread; the latest update of each running
job wins, and one loop sends them (at most every ``progress_interval_s`` over a network)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .. import codec
from .transport import Transport

__all__ = ["Progress"]

log = logging.getLogger(__name__)


class Progress:
    def __init__(self, transport: Transport, interval_s: float, running: Callable[[str], bool]) -> None:
        self.t = transport
        self.interval_s = interval_s
        self._running = running
        self._pending: dict[str, Any] = {}
        self._wake = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    def update(self, job_id: str, update: Any) -> None:
        """Called from the handler (any thread)."""
        loop = self.loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._set(job_id, update)
        else:
            loop.call_soon_threadsafe(self._set, job_id, update)

    def _set(self, job_id: str, update: Any) -> None:
        if self._running(job_id):
            self._pending[job_id] = update
            self._wake.set()

    def discard(self, job_id: str) -> None:
        """The job has ended: an update not yet sent is dropped (its result supersedes it)."""
        self._pending.pop(job_id, None)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, {}
            for job_id, update in pending.items():
                try:
                    await self.t.progress(job_id, codec.dumps(update))
                except Exception as e:  # not encodable (too deep, not JSON), or not delivered: this update only
                    log.warning("progress update of job %s dropped: %s", job_id, e)
            if not self.t.direct:
                await asyncio.sleep(self.interval_s)
