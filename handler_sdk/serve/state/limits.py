"""The platform's rate limits (SEED.md): requests per 10 s and requests in flight, per route group.

The window is exact: the timestamps of the last ``limit`` admitted requests sit in a ring, and a request is
admitted when the oldest of them is more than the window ago. Retry-After says when that will be.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import TooManyRequests

__all__ = ["DEFAULT_LIMITS", "Limit", "RateLimiter"]


@dataclass(frozen=True, slots=True)
class Limit:
    per_window: int
    concurrent: int | None = None
    window_s: float = 10.0


DEFAULT_LIMITS: dict[str, Limit] = {
    "run": Limit(1000, 200),
    "runsync": Limit(2000, 400),
    "status": Limit(2000, 400),  # /status, /status-sync and /stream share one budget
    "cancel": Limit(100, 20),
    "purge-queue": Limit(2),
    "openai": Limit(2000, 400),
    "requests": Limit(10, 2),
}


class _Bucket:
    __slots__ = ("in_flight", "limit", "stamps")

    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self.stamps: deque[float] = deque(maxlen=limit.per_window)
        self.in_flight = 0


class RateLimiter:
    def __init__(self, limits: dict[str, Limit] | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets = {name: _Bucket(lim) for name, lim in (limits or DEFAULT_LIMITS).items()}
        self._clock = clock
        # Requests refused, per group (read by /metrics).
        self.limited: dict[str, int] = dict.fromkeys(self._buckets, 0)

    def acquire(self, group: str) -> bool:
        """Admit one request of ``group`` or raise TooManyRequests. Returns True when ``release`` is owed."""
        b = self._buckets.get(group)
        if b is None:
            return False
        now = self._clock()
        lim = b.limit
        if len(b.stamps) == lim.per_window and now - b.stamps[0] < lim.window_s:
            wait = lim.window_s - (now - b.stamps[0])
            self.limited[group] += 1
            raise TooManyRequests(
                f"rate limit: {lim.per_window} requests per {lim.window_s:g} s on /{group}",
                retry_after=max(1, math.ceil(wait)),
            )
        if lim.concurrent is not None and b.in_flight >= lim.concurrent:
            self.limited[group] += 1
            raise TooManyRequests(f"rate limit: {lim.concurrent} concurrent requests on /{group}", retry_after=1)
        b.stamps.append(now)
        if lim.concurrent is None:
            return False
        b.in_flight += 1
        return True

    def release(self, group: str) -> None:
        self._buckets[group].in_flight -= 1
