"""What this process's finished jobs add up to: the counts by status and the two latency histograms of /metrics,
and the dashboard's per-second series of the last minutes.

One ``on_terminal`` hook keeps them all, not one hook per reader: it runs for every job that ends, and a second
hook read the same four fields again and cost a call of its own (together about a twentieth of a no-op /runsync
job's time in serve). Both are this process's figures: with many replicas on one store, each counts the jobs
that ended through it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import Any

from ... import metrics
from ...models import JobStatus
from ..state.api import JobView

__all__ = ["SERIES_S", "Finishes", "History"]

S = JobStatus
SERIES_S = 300
# A bucket's count column by status (failed and timed out share one).
_COLUMN = {S.COMPLETED: 1, S.CANCELLED: 3}


class History:
    """Finished jobs per second over the last ``span_s`` seconds: counts and latency sums (``Finishes`` adds)."""

    __slots__ = ("buckets", "last", "span_s")

    def __init__(self, span_s: int = SERIES_S) -> None:
        self.span_s = span_s
        # [second, completed, failed, cancelled, delay sum, delays, execution sum, executions]
        self.buckets: deque[list[int]] = deque()
        self.last: list[int] | None = None  # the latest bucket (the deque's last)

    def bucket(self, sec: int) -> list[int]:
        """The bucket for a job that ended in second ``sec``: a new one past the latest, which forgets the buckets
        older than the span; an earlier second (a clock that stepped back) is counted in the latest."""
        b = self.last = [sec, 0, 0, 0, 0, 0, 0, 0]
        buckets = self.buckets
        buckets.append(b)
        while buckets[0][0] <= sec - self.span_s:
            buckets.popleft()
        return b

    def series(self, now_ms: int) -> list[dict[str, Any]]:
        since = now_ms // 1000 - self.span_s
        return [
            {"t": b[0] * 1000, "completed": b[1], "failed": b[2], "cancelled": b[3],
             "delayMs": b[4] / b[5] if b[5] else None, "executionMs": b[6] / b[7] if b[7] else None}
            for b in self.buckets if b[0] > since
        ]  # fmt: skip


class Finishes:
    __slots__ = ("delay", "execution", "finished", "history")

    def __init__(self, span_s: int = SERIES_S) -> None:
        self.finished: dict[JobStatus, int] = {s: 0 for s in JobStatus if s.terminal}
        self.delay = metrics.Latency("handler_sdk_job_delay_seconds", "time queued (delayTime)")
        self.execution = metrics.Latency("handler_sdk_job_execution_seconds", "time run (executionTime)")
        self.history = History(span_s)

    def on_terminal(self, r: JobView) -> None:
        status, started, ended = r.status, r.started, r.ended
        self.finished[status] += 1
        # (Latency.observe_ms, inline: two observations a job.)
        if started is not None:
            delay = started - r.created
            h = self.delay
            h.counts[bisect_left(h.bounds, delay)] += 1
            h.sum_ms += delay
        if ended is None:
            return
        sec = ended // 1000
        hist = self.history
        b = hist.last
        if b is None or b[0] < sec:
            b = hist.bucket(sec)
        b[_COLUMN.get(status, 2)] += 1
        if started is not None:
            execution = ended - started
            h = self.execution
            h.counts[bisect_left(h.bounds, execution)] += 1
            h.sum_ms += execution
            b[4] += delay
            b[5] += 1
            b[6] += execution
            b[7] += 1
