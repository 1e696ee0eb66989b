"""Many jobs' pieces in one request: what queues while one request is in flight leaves together in the next.

Each caller awaits its own piece's verdict, judged alone by the endpoint (a code per job id), so one job's stale
or refused piece fails only that job's await. A request that fails as a whole fails every piece in it with the
same TransportError, and each caller retries its own piece as it would a request of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..errors import StaleResult, TransportError

__all__ = ["Coalescer"]

Send = Callable[[list[bytes]], Awaitable[dict[str, int]]]


class Coalescer:
    """``put(key, piece)`` queues a piece and waits for its code; ``send`` posts a list of pieces (at most
    ``max_bytes`` of them together, at least one) and returns each key's HTTP status."""

    def __init__(self, send: Send, max_bytes: int) -> None:
        self._send = send
        self._max = max_bytes
        self._queue: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self._bytes = 0
        self._task: asyncio.Task[None] | None = None

    async def put(self, key: str, piece: bytes) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((key, piece, fut))
        self._bytes += len(piece)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        await fut

    def _next(self) -> list[tuple[str, bytes, asyncio.Future[None]]]:
        if self._bytes <= self._max:
            batch, self._queue, self._bytes = self._queue, [], 0
            return batch
        n, size = 1, len(self._queue[0][1])
        while n < len(self._queue) and size + len(self._queue[n][1]) <= self._max:
            size += len(self._queue[n][1])
            n += 1
        batch, self._queue = self._queue[:n], self._queue[n:]
        self._bytes -= size
        return batch

    async def _run(self) -> None:
        while self._queue:
            batch = self._next()
            try:
                codes = await self._send([piece for _, piece, _ in batch])
            except TransportError as e:
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for key, _, fut in batch:
                if fut.done():  # its caller gave up (the job was cancelled)
                    continue
                code = codes.get(key, 500)
                if code == 200:
                    fut.set_result(None)
                elif code in (404, 409):
                    fut.set_exception(StaleResult(f"{key} answered {code}"))
                else:
                    fut.set_exception(TransportError(f"{key} answered {code}"))
