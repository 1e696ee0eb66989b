"""The SQLite default before and after the Redis store: older commits' code against this checkout, paired.

Every tree runs the same serve (``--no-rate-limits``, the no-op handler, the default store) side by side; each
round measures them back to back, the order rotating from round to round, so the machine's drift falls on all
alike. The figures are the per-round ratios new / old of the /runsync rate at 32 connections and of the drain rate
(one HTTP worker, benchmark 2's way), with a 95 % interval of their geometric mean, and the same for serve's CPU
per job (/proc), which the machine's load disturbs less than a rate. A target's verdict is the median of its
per-round ratios.

Part 4 of benchmark 12 (``redis_state``); ``python -m benchmarks sqlite_paired`` runs it alone, replacing only these
figures in the redis_state section that results.json holds and keeping the rest as they were. A target that
misses gets a py-spy profile of serve on that path, this checkout's and the old commit's, beside each other.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import statistics
import threading
from collections.abc import Sequence
from typing import Any

from .common import Figure, Run, Section, Target, http_ok, ratios, stop_all, wait_until
from .loadgen import have_wrk, run_load
from .profile import have_py_spy, profile_pid, summarize
from .replicas import NEW, NOOP, Tree, cpu_of, drain, old_tree, serve_proc

__all__ = ["BEFORE", "interval", "run", "run_pairs"]

# Yardsticks: main of 2026-11-29, before the Redis store (and before uvloop, metrics, the dashboard, idempotency
# keys: everything merged since); and the last commit before the JobState seam (d8f3ec8, df79176), which isolates
# what the seam itself did to the SQLite path.
BEFORE = "0a938fa"
SEAM = "0743c4e"
LOAD = "1-minute load average (uptime) after each SQLite pair"
BODY = '{"input":{"prompt":"hello","n":1}}'
# More, shorter rounds than a verdict on one long pair: each pair sees the same moment of a shared machine, and the
# median of many per-round ratios is what the target reads.
RUNSYNC_ROUNDS, RUNSYNC_S = 16, 2.0
# A drain of 20,000 jobs lasts about half a second at today's rates, and its per-round ratio ranged 0.80-1.09 over
# ten rounds (2026-12-04): sixteen rounds, as /runsync has, for a median that noise moves less.
DRAIN_ROUNDS, DRAIN_N = 16, 20_000
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
    sec.params["sqlite_pairs"] = {
        "runsync_rounds": RUNSYNC_ROUNDS, "runsync_s": RUNSYNC_S, "drain_rounds": DRAIN_ROUNDS, "drain_jobs": DRAIN_N,
        "trees": [t.label for t in trees],
    }  # fmt: skip
    rs = _runsync_rounds(run, sec, trees, 1 if run.quick else RUNSYNC_ROUNDS, 0.5 if run.quick else RUNSYNC_S, tool)
    dr = _drain_rounds(run, sec, trees, 1 if run.quick else DRAIN_ROUNDS, 300 if run.quick else DRAIN_N)
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
    if run.profile and have_py_spy() and not all(t.passed for t in sec.targets if t.label.startswith("SQLite")):
        sec.profile = _profile_misses(run, sec, trees[:2], tool)


def _profile_misses(run: Run, sec: Section, trees: list[Tree], tool: str) -> str:
    """py-spy on serve for each path whose target against BEFORE missed: this checkout's, then the old one's."""
    work = run.work / "redis_state"
    missed = {t.label for t in sec.targets if t.label.startswith("SQLite") and BEFORE in t.label and not t.passed}
    parts = []
    for t in trees:
        if any("/runsync" in m for m in missed):
            raw = work / f"pyspy-runsync-{t.label}.txt"
            p, base = serve_proc(t, work, f"prof-{t.label}", target=NOOP, extra=["--no-rate-limits"])
            try:
                wait_until(lambda b=base: http_ok(f"{b}/runsync", BODY.encode()), 60, "serve ready", p)  # type: ignore[misc]
                spy = threading.Thread(target=profile_pid, args=(p.pid, 4, raw))
                spy.start()
                run_load(f"{base}/runsync", BODY, 32, 4.5, tool)
                spy.join()
            finally:
                stop_all([p])
            parts.append(summarize(raw if raw.exists() else None, title=f"serve under /runsync at 32 conn, {t.label}"))
        if any("drain" in m for m in missed):
            raw = work / f"pyspy-drain-{t.label}.txt"
            drain(work, t, 600 if run.quick else DRAIN_N * 2, 1, tag=f"prof{t.label}", profile=raw)
            parts.append(summarize(raw if raw.exists() else None, title=f"serve while one worker drains, {t.label}"))
    return "\n\n".join(parts)


# --- run on its own ------------------------------------------------------------------------------------------

_OURS = ("SQLite ", "ratio new/", LOAD)
TITLE = "12. Redis store: replicas on one redis-server, round trips, CPU per job"


def _kept(old: dict[str, Any]) -> Section:
    """The redis_state section as results.json has it, less this module's figures, targets and notes."""
    sec = Section(old["name"], old["title"], params=old.get("params", {}), text=old.get("text", []))
    sec.date, sec.seconds, sec.plot = old.get("date", sec.date), old.get("seconds", 0.0), old.get("plot")
    for f in old.get("figures", []):
        if not f["name"].startswith(_OURS):
            sec.figures.append(Figure(f["name"], f["unit"], f["values"]))
    for t in old.get("targets", []):
        if not t["label"].startswith("SQLite "):
            r = t["ratio"]
            sec.targets.append(Target(t["label"], Figure(r["name"], r["unit"], r["values"]), t["bound"], t["op"]))
    sec.notes = [n for n in old.get("notes", []) if not n.startswith(("SQLite ", "The SQLite pairing "))]
    return sec


def run(run: Run) -> Section:
    """``python -m benchmarks sqlite_paired``: part 4 of benchmark 12 alone, into the redis_state section."""
    path = run.out / "results.json"
    old = json.loads(path.read_text())["sections"].get("redis_state") if path.exists() else None
    sec = _kept(old) if old else Section("redis_state", TITLE)
    tool = run.loadgen if run.loadgen != "auto" else ("wrk" if have_wrk() else "async")
    run.dir("redis_state")
    run_pairs(run, sec, tool)
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    sec.notes.append(
        f"The SQLite pairing (part 4) was re-run on its own on {now} (python -m benchmarks sqlite_paired); the other "
        f"figures of this section are from {sec.date}."
    )
    return sec
