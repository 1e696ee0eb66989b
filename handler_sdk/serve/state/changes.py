"""One pub/sub connection per process that wakes whoever waits on "this job changed".

The scripts PUBLISH on the endpoint's channel; this reader resolves the futures registered for the message's key
(a job id, ``w:<worker>`` for stops) with the message's status. A waiter registers its future before it reads the
state it waits to change, so a change between the two is not missed, and it costs no Redis call while it waits.
The same connection holds the process's own channel, on which a script wakes one idle taker of this replica
(``redis_takes.py``): each message there, a worker id, goes to ``on_own``. If the connection drops, messages may
have been lost: every waiter is woken (with LOST) to read the state again, and the reader reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

__all__ = ["ChangeFeed", "Watch"]

log = logging.getLogger("handler_sdk.serve")

# What a watch reports for a dropped connection: the changes in between are unknown, read the state again.
LOST = "LOST"


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Watch:
    """The changes of one key since the watch began; kept (not consumed by a wake-up) until read, so that two
    messages that arrive before the waiter runs again are both seen."""

    __slots__ = ("_fut", "key", "seen")

    def __init__(self, key: str) -> None:
        self.key = key
        self.seen: list[str] = []
        self._fut: asyncio.Future[None] | None = None

    def _push(self, status: str) -> None:
        self.seen.append(status)
        if self._fut is not None:
            _wake(self._fut)

    async def changes(self, timeout: float) -> list[str]:
        """The statuses carried since the last call ([LOST] after a reconnect), or [] once ``timeout`` passed."""
        if not self.seen and timeout > 0:
            loop = asyncio.get_running_loop()
            fut = self._fut = loop.create_future()
            timer = loop.call_later(timeout, _wake, fut)
            try:
                await fut
            finally:
                timer.cancel()
                self._fut = None
        seen, self.seen = self.seen, []
        return seen


class ChangeFeed:
    def __init__(
        self,
        client: Redis,
        channel: str,
        *,
        own: str | None = None,
        on_own: Callable[[str], None] | None = None,
        reconnect_s: float = 0.2,
    ) -> None:
        self.client = client
        self.channel = channel
        self.own = own
        self.on_own = on_own
        self._channels = [channel] if own is None else [channel, own]
        self._own_b = None if own is None else own.encode()
        self.reconnect_s = reconnect_s
        self._waiters: dict[str, list[Watch]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.messages = 0
        self.subscriptions = 0

    async def start(self) -> None:
        """Subscribe, and return once the subscription is confirmed (a change from now on is seen)."""
        self._task = asyncio.create_task(self._run())
        await self._ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._wake_all()

    def watch(self, key: str) -> Watch:
        w = Watch(key)
        self._waiters.setdefault(key, []).append(w)
        return w

    def forget(self, w: Watch) -> None:
        ws = self._waiters.get(w.key)
        if ws is not None:
            with contextlib.suppress(ValueError):
                ws.remove(w)
            if not ws:
                del self._waiters[w.key]

    def push(self, key: str, status: str) -> bool:
        """Hand ``status`` to the watches of ``key`` as if it had been published; False if there are none."""
        ws = self._waiters.get(key)
        for w in ws or ():
            w._push(status)
        return bool(ws)

    def _dispatch(self, data: bytes) -> None:
        self.messages += 1
        key, _, status = data.decode().partition(" ")
        for w in self._waiters.get(key, ()):
            w._push(status)

    def wake_all(self) -> None:
        """Wake every watch as if the feed had been lost: each reads the state again."""
        self._wake_all()

    def _wake_all(self) -> None:
        for ws in self._waiters.values():
            for w in ws:
                w._push(LOST)

    async def _run(self) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        while True:
            pubsub: PubSub = self.client.pubsub()
            try:
                await pubsub.subscribe(*self._channels)
                while True:
                    msg = await pubsub.get_message(timeout=None)
                    if msg is None:
                        continue
                    if msg["type"] == "subscribe" and msg["data"] == len(self._channels):  # all of them
                        self.subscriptions += 1
                        self._ready.set()
                        # Changes during the gap before a re-subscription were not seen.
                        self._wake_all()
                    elif msg["type"] == "message":
                        if msg["channel"] == self._own_b:
                            self.messages += 1
                            if self.on_own is not None:
                                self.on_own(msg["data"].decode())
                        else:
                            self._dispatch(msg["data"])
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                log.warning("lost the Redis change feed (%s); reconnecting", e)
                self._wake_all()
                await asyncio.sleep(self.reconnect_s)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # (typed from redis 8.2 on)
