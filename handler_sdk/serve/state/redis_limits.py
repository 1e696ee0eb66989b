"""serve/state/limits.py's rate limits with the window shared in Redis, so that the limits hold for all replicas.

The per-window budget is global (one list of stamps per route group, ``lua/ratelimit.lua``); the in-flight cap is
per replica, as a count in this process: a request's end need not cost a Redis call, and a dead replica leaves no
stale in-flight count behind.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ...errors import StoreError, TooManyRequests
from .limits import DEFAULT_LIMITS, Limit
from .redis_client import key_prefix
from .scripts import SCRIPTS

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisRateLimiter"]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class RedisRateLimiter:
    """RateLimiter's interface, with ``acquire`` a coroutine (one round trip per admitted or refused request)."""

    def __init__(
        self,
        client: Redis,
        endpoint: str,
        limits: dict[str, Limit] | None = None,
        *,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self.client = client
        self.prefix = key_prefix(endpoint)
        self._limits = limits or DEFAULT_LIMITS
        self._in_flight = dict.fromkeys(self._limits, 0)
        self._clock = clock
        # Requests this replica refused, per group (read by /metrics).
        self.limited: dict[str, int] = dict.fromkeys(self._limits, 0)

    async def acquire(self, group: str) -> bool:
        """Admit one request of ``group`` or raise TooManyRequests. Returns True when ``release`` is owed."""
        lim = self._limits.get(group)
        if lim is None:
            return False
        # The local cap first: a request it refuses must not spend a slot of the shared window.
        if lim.concurrent is not None and self._in_flight[group] >= lim.concurrent:
            self.limited[group] += 1
            raise TooManyRequests(f"rate limit: {lim.concurrent} concurrent requests on /{group}", retry_after=1)
        window_ms = round(lim.window_s * 1000)
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            wait_ms = await SCRIPTS.call(
                self.client, "ratelimit", self.prefix, self._clock(), group, lim.per_window, window_ms
            )
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            raise StoreError(f"Redis unavailable: {e}") from None
        if wait_ms >= 0:
            self.limited[group] += 1
            raise TooManyRequests(
                f"rate limit: {lim.per_window} requests per {lim.window_s:g} s on /{group}",
                retry_after=max(1, math.ceil(wait_ms / 1000)),
            )
        if lim.concurrent is None:
            return False
        self._in_flight[group] += 1
        return True

    def release(self, group: str) -> None:
        self._in_flight[group] -= 1
