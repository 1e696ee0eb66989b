"""The SQLite default before and after the Redis store: older commits' code against this checkout, paired.

Every tree runs the same serve (``--no-rate-limits``, the no-op handler, the default store) side by side; each
round measures them back to back, the order rotating from round to round, so the machine's drift falls on all
alike. The figures are the per-round ratios new / old of the /runsync rate at 32 connections and of the drain rate
(one HTTP worker, benchmark 2's way), with a 95 % interval of their geometric mean, and the same for serve's CPU
per job (/proc), which the machine's load disturbs less than a rate.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from typing import Any

from .common import Run, Section, Target, http_ok, ratios, stop_all, wait_until
from .loadgen import run_load
from .replicas import NEW, NOOP, Tree, cpu_of, drain, old_tree, serve_proc

__all__ = ["BEFORE", "interval", "run_pairs"]

# Yardsticks: main of 2026-11-29, before the Redis store (and before uvloop, metrics, the dashboard, idempotency
# keys: everything merged since); and the last commit before the JobState seam (d8f3ec8, df79176), which isolates
# what the seam itself did to the SQLite path.
BEFORE = "0a938fa"
SEAM = "0743c4e"
LOAD = "1-minute load average (uptime) after each SQLite pair"
BODY = '{"input":{"prompt":"hello","n":1}}'
# Student's t at 97.5 % for 1..12 degrees of freedom: a 95 % two-sided interval without scipy.
_T975 = [12.71, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179]


_Measured = dict[str, tuple[list[float], list[float]]]  # tree label -> (rates, serve CPU µs per job), per round


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


def _rotated(items: list[Any], i: int) -> list[Any]:
    return items[i % len(items) :] + items[: i % len(items)]


def _runsync_rounds(run: Run, sec: Section, trees: list[Tree], rounds: int, secs: float, tool: str) -> _Measured:
    work = run.work / "redis_state"
    procs, urls = [], []
    for t in trees:
        p, base = serve_proc(t, work, f"paired-{t.label}", target=NOOP, extra=["--no-rate-limits"])
        procs.append(p)
        urls.append(f"{base}/runsync")
    rate: _Measured = {t.label: ([], []) for t in trees}
    try:
        for p, u in zip(procs, urls, strict=True):
            wait_until(lambda u=u: http_ok(u, BODY.encode()), 60, f"{u} ready", p)  # type: ignore[misc]
        if not run.quick:
            for u in urls:
                run_load(u, BODY, 32, 1.0, tool)
        for i in range(rounds):
            for t, u, p in _rotated(list(zip(trees, urls, procs, strict=True)), i):
                c0 = cpu_of([p.pid])[0]
                load = run_load(u, BODY, 32, secs, tool)
                rate[t.label][0].append(load.rps)
                rate[t.label][1].append((cpu_of([p.pid])[0] - c0) / max(load.requests, 1) * 1e6)
            sec.figure(LOAD, "load").values.append(os.getloadavg()[0])
            run.log("sqlite paired /runsync " + ", ".join(f"{k} {v[0][-1]:,.0f}" for k, v in rate.items()) + " req/s")
    finally:
        stop_all(procs)
    for t in trees:
        sec.figure(f"SQLite /runsync at 32 conn, paired, {t.label} code", "req/s").values = rate[t.label][0]
        sec.figure(f"SQLite /runsync, paired: serve CPU per job, {t.label} code", "µs/job").values = rate[t.label][1]
    return rate


def _drain_rounds(run: Run, sec: Section, trees: list[Tree], rounds: int, n: int) -> _Measured:
    work = run.work / "redis_state"
    rate: _Measured = {t.label: ([], []) for t in trees}
    for i in range(rounds):
        for t in _rotated(trees, i):
            d = drain(work, t, n, 1, tag=f"sq{t.label}{i}")
            rate[t.label][0].append(d.rate)
            rate[t.label][1].append(d.serve_us)
        sec.figure(LOAD, "load").values.append(os.getloadavg()[0])
        run.log("sqlite paired drain " + ", ".join(f"{k} {v[0][-1]:,.0f}" for k, v in rate.items()) + " jobs/s")
    for t in trees:
        sec.figure(f"SQLite drain, 1 worker, paired, {t.label} code", "jobs/s").values = rate[t.label][0]
        sec.figure(f"SQLite drain, paired: serve CPU per job, {t.label} code", "µs/job").values = rate[t.label][1]
    return rate


def run_pairs(run: Run, sec: Section, tool: str) -> None:
    """Item 4 of the Redis benchmark: the default store must not get slower (new within 5 % of old, or better)."""
    trees = [NEW, old_tree(run, BEFORE), old_tree(run, SEAM)]
    rs = _runsync_rounds(run, sec, trees, 1 if run.quick else 8, 0.5 if run.quick else 2.0, tool)
    dr = _drain_rounds(run, sec, trees, 1 if run.quick else 4, 300 if run.quick else 10_000)
    for old in (BEFORE, SEAM):
        for what, m in (("/runsync rate at 32 conn", rs), ("drain rate, 1 worker", dr)):
            t = Target(f"SQLite {what}: new / old ({old}), paired", sec.figure(f"ratio new/{old}, {what}", "x"), 0.95)
            t.ratio.values = ratios(m["new"][0], m[old][0])
            sec.targets.append(t)
            cpu = ratios(m["new"][1], m[old][1])
            sec.figure(f"ratio new/{old}, serve CPU per job, {what.split()[0]}", "x").values = cpu
            g, lo, hi = interval(t.ratio.values)
            cg, clo, chi = interval(cpu)
            sec.notes.append(
                f"SQLite {what}, new / {old} over {len(t.ratio.values)} rounds: geometric mean {g:.3f}, 95 % "
                f"interval [{lo:.3f}, {hi:.3f}]; serve CPU per job new / {old}: {cg:.3f} [{clo:.3f}, {chi:.3f}] "
                "(t on the logs of the per-round ratios)."
            )
