"""A standalone worker's Prometheus ``/metrics``, on ``HANDLER_SDK_METRICS_PORT`` (off when unset).

The worker's figures come from a transport wrapper, so the runtime itself knows nothing of metrics: each job's
outcome (``handler_sdk_jobs_finished_total{status}``), its time from take to result
(``handler_sdk_job_execution_seconds``) and its stream items; plus the vLLM engine's figures when this process
runs one. With an API key configured the route needs ``Authorization: Bearer KEY`` (or the bare key).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from .. import metrics
from ..chunker import EncodedItem
from ..errors import ConfigError, StaleResult
from ..models import JobStatus
from ..runner import Outcome
from .transport import Assignment, Multiplexing, Pipelining, StreamSink, Transport

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["MeteredTransport", "metrics_port_from_env", "start_exporter"]

log = logging.getLogger(__name__)


def metrics_port_from_env(env: Mapping[str, str]) -> int | None:
    raw = env.get("HANDLER_SDK_METRICS_PORT", "").strip()
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"HANDLER_SDK_METRICS_PORT={raw!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"HANDLER_SDK_METRICS_PORT={raw!r} is not a port number (0-65535)")
    return port


class MeteredTransport:
    """Wraps a worker's transport and counts what passes through it."""

    def __init__(self, inner: Transport, replica: str | None = None) -> None:
        self.inner = inner
        self.exporter = metrics.Exporter(replica or inner.worker_id)
        self.finished: dict[JobStatus, int] = {s: 0 for s in JobStatus if s.terminal}
        self.stream_items = 0
        self.stream_bytes = 0
        self._taken: dict[str, float] = {}
        self._execution = self.exporter.histogram(
            "handler_sdk_job_execution_seconds", "time from a job's take to its result"
        ).labels(replica=self.exporter.replica)
        self.exporter.add(self._families)

    # The protocol's attributes read through to the inner transport, which learns some of them as it goes.
    @property
    def worker_id(self) -> str:
        return self.inner.worker_id

    @worker_id.setter
    def worker_id(self, value: str) -> None:
        self.inner.worker_id = value

    @property
    def batch_stream(self) -> bool:
        return self.inner.batch_stream

    @batch_stream.setter
    def batch_stream(self, value: bool) -> None:
        self.inner.batch_stream = value

    @property
    def direct(self) -> bool:
        return self.inner.direct

    @direct.setter
    def direct(self, value: bool) -> None:
        self.inner.direct = value

    @property
    def can_hand_back(self) -> bool:
        return self.inner.can_hand_back

    @can_hand_back.setter
    def can_hand_back(self, value: bool) -> None:
        self.inner.can_hand_back = value

    @property
    def takes_in_flight(self) -> int:
        return self.inner.takes_in_flight if isinstance(self.inner, Pipelining) else 1

    async def take(self, n: int, busy: bool) -> list[Assignment]:
        jobs = await self.inner.take(n, busy)
        now = time.monotonic()
        for a in jobs:
            self._taken[a.id] = now
        return jobs

    async def stream(self, job_id: str, items: Sequence[EncodedItem]) -> None:
        await self.inner.stream(job_id, items)
        self.stream_items += len(items)
        self.stream_bytes += sum(len(i.output) for i in items)

    def open_stream(self, job_id: str, *, retries: int = 5, backoff_s: float = 0.2) -> StreamSink | None:
        """The inner transport's multiplexed stream (its items are counted where they are sent), or None."""
        if not isinstance(self.inner, Multiplexing):
            return None
        return self.inner.open_stream(job_id, retries=retries, backoff_s=backoff_s)

    def _stream_counts(self) -> tuple[int, int]:
        items, size = self.stream_items, self.stream_bytes
        sent = getattr(self.inner, "stream_sent", None)
        if sent is not None:
            items, size = items + sent[0], size + sent[1]
        return items, size

    async def progress(self, job_id: str, output: bytes) -> None:
        await self.inner.progress(job_id, output)

    async def done(self, job_id: str, outcome: Outcome) -> None:
        """Counted once delivered: a result that is retried counts once, one refused (StaleResult) not at all."""
        try:
            await self.inner.done(job_id, outcome)
        except StaleResult:
            self._taken.pop(job_id, None)
            raise
        if outcome.status in self.finished:
            self.finished[outcome.status] += 1
        if (t0 := self._taken.pop(job_id, None)) is not None:
            self._execution.observe(time.monotonic() - t0)

    async def ping(self, job_ids: Sequence[str], initializing: bool) -> None:
        await self.inner.ping(job_ids, initializing)

    async def stops(self) -> list[str]:
        ids = await self.inner.stops()
        for i in ids:
            self._taken.pop(i, None)  # stopped: no result, no execution time
        return ids

    async def hand_back(self, job_ids: Sequence[str]) -> None:
        await self.inner.hand_back(job_ids)
        for i in job_ids:
            self._taken.pop(i, None)

    async def close(self) -> None:
        await self.inner.close()

    def _families(self) -> Iterable[Metric]:
        rep = self.exporter.replica
        items, size = self._stream_counts()
        done = [((s.value, rep), n) for s, n in self.finished.items()]
        yield metrics.counter("handler_sdk_jobs_finished", "jobs this worker reported, by status",
                              ["status", "replica"], done)  # fmt: skip
        yield metrics.counter("handler_sdk_stream_items", "stream items sent", ["replica"],
                              [((rep,), items)])  # fmt: skip
        yield metrics.counter("handler_sdk_stream_bytes", "serialized bytes of stream item outputs sent",
                              ["replica"], [((rep,), size)])  # fmt: skip


async def start_exporter(
    exporter: metrics.Exporter, port: int, api_key: str | None = None, host: str = "0.0.0.0"
) -> tuple[web.AppRunner, int]:
    """Serve ``GET /metrics`` on ``host:port``; returns the runner (clean it up to stop) and the bound port."""

    async def scrape(request: web.Request) -> web.Response:
        if api_key is not None:
            header = request.headers.get("Authorization", "")
            token = header[7:] if header.startswith("Bearer ") else header
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return web.json_response({"error": "missing or wrong API key (send Authorization: Bearer KEY)"},
                                         status=401)  # fmt: skip
        return web.Response(body=exporter.render(), headers={"Content-Type": metrics.CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    log.info("worker metrics on http://%s:%d/metrics", host, bound)
    return runner, int(bound)
