"""Prometheus exposition shared by serve's ``/metrics`` and a standalone worker's: the lazy import of
prometheus-client (the ``metrics`` extra), the registry each one scrapes, and the vLLM engine's figures.

Every figure is read when scraped from state the process keeps anyway (the broker's counts, the engine's stats),
except the two latency histograms, which observe each finished job: nothing else touches the hot path.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .errors import NotEnabled

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Histogram
    from prometheus_client.metrics_core import Metric

__all__ = ["MISSING", "Exporter", "Latency", "default_replica", "require"]

MISSING = "prometheus-client is not installed: pip install 'handler-sdk[metrics]' to enable /metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds, from a no-op job's few milliseconds to a long generation.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def require() -> None:
    """Raise NotEnabled (501, naming the extra) when prometheus-client cannot be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise NotEnabled(MISSING) from None


def default_replica() -> str:
    """This process's ``replica`` label: ``HANDLER_SDK_REPLICA`` if set, else host and pid."""
    return os.environ.get("HANDLER_SDK_REPLICA") or f"{socket.gethostname()}-{os.getpid()}"


class _Families:
    """A collector whose metric families are built by a function at each scrape."""

    def __init__(self, build: Callable[[], Iterable[Metric]]) -> None:
        self._build = build

    def collect(self) -> Iterable[Metric]:
        return self._build()


class Exporter:
    """One registry, scraped by ``render``: collectors built at scrape time plus the latency histograms."""

    def __init__(self, replica: str | None = None) -> None:
        require()
        from prometheus_client import CollectorRegistry

        self.replica = replica or default_replica()
        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Families(lambda: vllm_families(self.replica)))

    def histogram(self, name: str, doc: str) -> Histogram:
        from prometheus_client import Histogram

        return Histogram(name, doc, ["replica"], registry=self.registry, buckets=LATENCY_BUCKETS)

    def add(self, build: Callable[[], Iterable[Metric]]) -> None:
        self.registry.register(_Families(build))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Latency:
    """A latency histogram of whole milliseconds in plain ints, rendered as prometheus-client's histogram of seconds
    (the same samples, ``_created`` too) when scraped. Observing is a bisect and two additions, where a
    prometheus-client Histogram takes a lock for each of its bucket, count and sum: serve observes two per job.
    An integer count of ms is in a bucket exactly when its seconds (ms / 1000) are."""

    __slots__ = ("_created", "_labels", "bounds", "counts", "doc", "name", "sum_ms")

    def __init__(self, name: str, doc: str, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.name, self.doc = name, doc
        self._labels = list(buckets)
        # A whole number of ms is at most a bound exactly when it is at most the bound's floor: int comparisons.
        self.bounds = [math.floor(round(b * 1000, 6)) for b in self._labels]
        self.counts = [0] * (len(self.bounds) + 1)  # the last: over every bound (+Inf only)
        self.sum_ms = 0
        self._created = time.time()

    def observe_ms(self, ms: int) -> None:
        self.counts[bisect_left(self.bounds, ms)] += 1
        self.sum_ms += ms

    def family(self, replica: str) -> Metric:
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.samples import Sample
        from prometheus_client.utils import floatToGoString

        fam = HistogramMetricFamily(self.name, self.doc, labels=["replica"])
        buckets, total = [], 0
        for bound, n in zip(self._labels, self.counts, strict=False):
            total += n
            buckets.append((floatToGoString(bound), float(total)))  # type: ignore[no-untyped-call]
        buckets.append(("+Inf", float(total + self.counts[-1])))
        fam.add_metric([replica], buckets, self.sum_ms / 1000)
        fam.samples.append(Sample(f"{self.name}_created", {"replica": replica}, self._created))
        return fam


def counter(name: str, doc: str, labels: Iterable[str], values: Iterable[tuple[Iterable[str], float]]) -> Metric:
    """A counter family (``name`` without ``_total``) with one sample per label values."""
    from prometheus_client.core import CounterMetricFamily

    fam = CounterMetricFamily(name, doc, labels=list(labels))
    for label_values, v in values:
        fam.add_metric(list(label_values), v)
    return fam


def gauge(name: str, doc: str, labels: Iterable[str], values: Iterable[tuple[Iterable[str], float]]) -> Metric:
    from prometheus_client.core import GaugeMetricFamily

    fam = GaugeMetricFamily(name, doc, labels=list(labels))
    for label_values, v in values:
        fam.add_metric(list(label_values), v)
    return fam


def vllm_families(replica: str) -> list[Metric]:
    """The figures of every vLLM engine this process runs; none when vLLM was never imported (never imports it).
    With several engines the KV cache usage is the fullest one's; the rest add up."""
    mod: Any = sys.modules.get("handler_sdk.vllm.metrics")
    engines = list(mod.live_stats()) if mod is not None else []
    if not engines:
        return []
    snaps = [e.snapshot() for e in engines]
    kv = max(float(s["gpu_kv_cache_usage"]) for s in snaps)
    running = sum(s["running"] for s in snaps)
    pending = sum(s["pending"] for s in snaps)
    prompt = sum(e.prompt_tokens_total for e in engines)
    generated = sum(e.generation_tokens_total for e in engines)
    return [
        gauge("handler_sdk_vllm_kv_cache_usage", "KV cache in use, 0 to 1", [], [((), kv)]),
        gauge("handler_sdk_vllm_running", "requests the engine is running", [], [((), running)]),
        gauge("handler_sdk_vllm_pending", "requests waiting in the engine's scheduler", [], [((), pending)]),
        counter("handler_sdk_vllm_prompt_tokens", "prompt tokens computed", ["replica"], [((replica,), prompt)]),
        counter("handler_sdk_vllm_generation_tokens", "tokens generated", ["replica"], [((replica,), generated)]),
    ]
