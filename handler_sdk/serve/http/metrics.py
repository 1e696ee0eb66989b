"""``GET /metrics`` on serve: the endpoint's figures in Prometheus text format (the ``metrics`` extra).

Everything is read at scrape time through the broker's public state (``health()``, ``submitted``, the stream
counters) and the rate limiter's ``limited``, except the two latency histograms and the finished counts, which an
``on_terminal`` hook records for each job (``finishes.py``, shared with the dashboard). Counters are this process's
and carry a ``replica`` label; the queue, in-progress and worker gauges describe the endpoint's shared state, the
same on every replica of one store (aggregate them with ``max()``, not ``sum()``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ... import metrics
from ...errors import NotEnabled
from ..state.api import JobState
from ..state.limits import RateLimiter
from ..state.redis_limits import RedisRateLimiter
from .finishes import Finishes
from .router import Routes

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["ServeMetrics", "add_metrics_route"]

log = logging.getLogger(__name__)

Limiter = RateLimiter | RedisRateLimiter


class ServeMetrics:
    """The registry behind serve's /metrics. Raises NotEnabled when prometheus-client is missing."""

    def __init__(
        self,
        state: JobState,
        finishes: Finishes,
        limiter: RateLimiter | RedisRateLimiter | None = None,
        replica: str | None = None,
    ) -> None:
        self.exporter = metrics.Exporter(replica)
        self.state = state
        # The endpoint-wide counts, read (a Redis round trip with that store) before each scrape renders.
        self.health: dict[str, Any] = {"jobs": {"inQueue": 0, "inProgress": 0}, "workers": {}}
        self.limiter = limiter
        self.finishes = finishes
        r = self.exporter.replica
        ex = self.exporter
        ex.add(lambda: (finishes.delay.family(r), finishes.execution.family(r)))
        ex.add(self._families)

    def _families(self) -> Iterable[Metric]:
        b, rep = self.state, self.exporter.replica
        h = self.health
        c = metrics.counter
        yield c("handler_sdk_jobs_submitted", "jobs submitted, by route", ["route", "replica"],
                [((route, rep), n) for route, n in b.submitted.items()])  # fmt: skip
        yield c("handler_sdk_jobs_finished", "jobs that reached a terminal status", ["status", "replica"],
                [((s.value, rep), n) for s, n in self.finishes.finished.items()])  # fmt: skip
        limited = self.limiter.limited if self.limiter is not None else {}
        yield c("handler_sdk_rate_limited", "requests refused with 429, by rate-limit group", ["group", "replica"],
                [((g, rep), n) for g, n in limited.items()])  # fmt: skip
        yield c("handler_sdk_stream_items", "stream items received from workers", ["replica"],
                [((rep,), b.stream_items)])  # fmt: skip
        yield c("handler_sdk_stream_bytes", "serialized bytes of stream item outputs", ["replica"],
                [((rep,), b.stream_bytes)])  # fmt: skip
        g = metrics.gauge
        yield g("handler_sdk_queue_depth", "jobs IN_QUEUE (endpoint-wide: aggregate with max)", [],
                [((), h["jobs"]["inQueue"])])  # fmt: skip
        yield g("handler_sdk_jobs_in_progress", "jobs IN_PROGRESS (endpoint-wide: aggregate with max)", [],
                [((), h["jobs"]["inProgress"])])  # fmt: skip
        yield g("handler_sdk_workers", "workers by state (endpoint-wide: aggregate with max)", ["state"],
                [((k,), v) for k, v in h["workers"].items()])  # fmt: skip


def add_metrics_route(
    routes: Routes,
    state: JobState,
    finishes: Finishes,
    limiter: RateLimiter | RedisRateLimiter | None,
    enabled: bool = True,
) -> None:
    """``GET /metrics`` behind the API key; 501 naming the extra (or the flag) when it cannot serve."""
    why: str | None = None
    m: ServeMetrics | None = None
    if not enabled:
        why = "metrics are turned off (serve --no-metrics)"
    else:
        try:
            m = ServeMetrics(state, finishes, limiter)
        except NotEnabled as e:
            why = e.message
            log.info("%s", why)

    async def scrape(request: web.Request) -> web.Response:
        if m is None:
            raise NotEnabled(why or metrics.MISSING)
        m.health = await state.health()
        return web.Response(body=m.exporter.render(), headers={"Content-Type": metrics.CONTENT_TYPE})

    routes.add("GET", "/metrics", scrape, root=True)
