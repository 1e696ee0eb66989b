"""The SQLite default before and after the Redis store: commit 0a938fa's code against this checkout, paired.

Both trees run the same serve (``--no-rate-limits``, the no-op handler, the default store) side by side; each pair
measures one then the other, back to back, the order alternating from pair to pair, so the machine's drift falls
on both alike. The figures are the per-pair ratios new / old of the /runsync rate at 32 connections and of the
drain rate (one HTTP worker, benchmark 2's way), with a 95 % interval of their geometric mean.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from .common import Run, Section, Target, http_ok, ratios, stop_all, wait_until
from .loadgen import run_load
from .replicas import NEW, NOOP, Tree, drain, old_tree, serve_proc

__all__ = ["BEFORE", "interval", "run_pairs"]

BEFORE = "0a938fa"  # main before the Redis store (the JobState seam and its two engines)
BODY = '{"input":{"prompt":"hello","n":1}}'
# Student's t at 97.5 % for 1..12 degrees of freedom: a 95 % two-sided interval without scipy.
_T975 = [12.71, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179]


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Geometric mean of ratios and its 95 % interval (t on the logs); the interval is NaN for one value."""
    logs = [math.log(v) for v in values if v > 0]
    if not logs:
        return float("nan"), float("nan"), float("nan")
    m = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(m), float("nan"), float("nan")
    half = _T975[min(len(logs) - 2, len(_T975) - 1)] * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(m), math.exp(m - half), math.exp(m + half)


def _runsync_pairs(run: Run, sec: Section, trees: list[Tree], pairs: int, secs: float, tool: str) -> list[float]:
    work = run.work / "redis_state"
    procs, urls = [], []
    for t in trees:
        p, base = serve_proc(t, work, f"paired-{t.label}", target=NOOP, extra=["--no-rate-limits"])
        procs.append(p)
        urls.append(f"{base}/runsync")
    try:
        for p, u in zip(procs, urls, strict=True):
            wait_until(lambda u=u: http_ok(u, BODY.encode()), 60, f"{u} ready", p)  # type: ignore[misc]
        if not run.quick:
            for u in urls:
                run_load(u, BODY, 32, 1.0, tool)
        rps: dict[str, list[float]] = {t.label: [] for t in trees}
        for i in range(pairs):
            order = list(zip(trees, urls, strict=True))
            for t, u in order if i % 2 == 0 else order[::-1]:
                rps[t.label].append(run_load(u, BODY, 32, secs, tool).rps)
            run.log(f"sqlite paired /runsync {i}: new {rps['new'][-1]:,.0f}, old {rps[trees[1].label][-1]:,.0f} req/s")
    finally:
        stop_all(procs)
    for t in trees:
        sec.figure(f"SQLite /runsync at 32 conn, paired, {t.label} code", "req/s").values = rps[t.label]
    return ratios(rps["new"], rps[trees[1].label])


def _drain_pairs(run: Run, sec: Section, trees: list[Tree], pairs: int, n: int) -> list[float]:
    work = run.work / "redis_state"
    rate: dict[str, list[float]] = {t.label: [] for t in trees}
    for i in range(pairs):
        for t in trees if i % 2 == 0 else trees[::-1]:
            rate[t.label].append(drain(work, t, n, 1, tag=f"sq{t.label}{i}").rate)
        run.log(f"sqlite paired drain {i}: new {rate['new'][-1]:,.0f}, old {rate[trees[1].label][-1]:,.0f} jobs/s")
    for t in trees:
        sec.figure(f"SQLite drain, 1 worker, paired, {t.label} code", "jobs/s").values = rate[t.label]
    return ratios(rate["new"], rate[trees[1].label])


def run_pairs(run: Run, sec: Section, tool: str) -> None:
    """Item 4 of the Redis benchmark: the default store must not get slower (new within 5 % of old, or better)."""
    trees = [NEW, old_tree(run, BEFORE)]
    rs = _runsync_pairs(run, sec, trees, 1 if run.quick else 8, 0.5 if run.quick else 2.0, tool)
    dr = _drain_pairs(run, sec, trees, 1 if run.quick else 4, 300 if run.quick else 10_000)
    for what, values in (("/runsync rate at 32 conn", rs), ("drain rate, 1 worker", dr)):
        t = Target(f"SQLite {what}: new / old ({BEFORE}), paired", sec.figure(f"ratio new/old, {what}", "x"), 0.95)
        t.ratio.values = values
        sec.targets.append(t)
        g, lo, hi = interval(values)
        sec.notes.append(
            f"SQLite {what}, new / old ({BEFORE}) over {len(values)} pairs: geometric mean {g:.3f}, 95 % interval "
            f"[{lo:.3f}, {hi:.3f}] (t on the logs of the per-pair ratios)."
        )
