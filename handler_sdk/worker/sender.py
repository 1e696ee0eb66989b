"""Delivers one job's stream items in order, several per request when they come faster than they are sent.

A slow yield goes out at once; while one request is in flight, later yields queue and leave together in the
next one (never merged: each keeps its own place). ``max_buffered`` bytes of queued items make the handler wait,
so a fast generator cannot outrun the network without bound.
"""

from __future__ import annotations

import asyncio
import logging
import random

from ..chunker import EncodedItem, pack
from ..errors import StaleResult, TransportError
from .transport import Transport

__all__ = ["StreamSender"]

log = logging.getLogger(__name__)


class StreamSender:
    def __init__(
        self,
        transport: Transport,
        job_id: str,
        *,
        max_buffered: int = 8 << 20,
        retries: int = 5,
        backoff_s: float = 0.2,
    ) -> None:
        self.t = transport
        self.job_id = job_id
        self._buf: list[EncodedItem] = []
        self._buffered = 0
        self._max = max_buffered
        self._task: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        self._room.set()
        self._retries = retries
        self._backoff = backoff_s
        self.error: BaseException | None = None
        self.sent = 0

    async def emit(self, item: EncodedItem) -> None:
        if self.error is not None:
            raise self.error
        if self.t.direct:
            await self.t.stream(self.job_id, [item])
            self.sent += 1
            return
        self._buf.append(item)
        self._buffered += item.size
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name=f"stream-{self.job_id}")
        if self._buffered >= self._max:
            self._room.clear()
            await self._room.wait()
            if self.error is not None:
                raise self.error

    async def _send(self, group: list[EncodedItem]) -> None:
        delay = self._backoff
        for attempt in range(self._retries + 1):
            try:
                await self.t.stream(self.job_id, group)
                self.sent += len(group)
                return
            except StaleResult:
                raise
            except TransportError as e:
                if attempt == self._retries:
                    raise
                log.warning("stream post for job %s failed (%s); retrying in %.2fs", self.job_id, e, delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay *= 2

    async def _drain(self) -> None:
        try:
            while self._buf:
                batch, self._buf, self._buffered = self._buf, [], 0
                self._room.set()
                groups = pack(batch) if self.t.batch_stream else ([i] for i in batch)
                for g in groups:
                    await self._send(g)
        except (TransportError, StaleResult) as e:
            self.error = e
            self._buf.clear()
        finally:
            self._room.set()

    async def flush(self) -> None:
        """Wait until every item emitted so far is delivered; re-raises a delivery failure."""
        if self._task is not None:
            await self._task
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._buf.clear()
