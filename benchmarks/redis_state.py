"""Benchmark 12: the Redis store: serve replicas on one redis-server against the SQLite single node.

1. /runsync at 32 connections (no-op handler, in-process workers, rate limits off) and a queue drain over the HTTP
   worker protocol (one ``handler_sdk.worker`` per replica, benchmark 2's way) with 1, 2 and 4 serve replicas
   (processes) on one redis-server, and the SQLite serve, in the same rounds; the load is dealt over the replicas.
2. Redis round trips per job, counted inside each replica (``rt_count``: one per write to a Redis connection), by
   call: counting runs of 1, 2 and 4 replicas with the rate limits on, one job at a time, for the goals (≤ 8 per
   /run job with its /status, ≤ 6 per /runsync job); and the counts under load of every round of 1.
3. CPU µs per job of each process (/proc/PID/stat deltas: the replicas, redis-server, the workers, the load
   generator), redis-benchmark's rates as Redis's own ceiling, and from these the projection to N machines.
4. The SQLite default before (0a938fa) and after, paired (``sqlite_paired.py``).

It starts its own redis-server (no persistence) on a free port. ``BENCH_REDIS_ONLY=counts python -m benchmarks
redis_state`` runs item 2's counting runs alone (round trips are counts, insensitive to the machine's load) and
keeps every other figure, table and note of the section as the last full run left them in results.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from typing import Any

from .common import Figure, Run, Section, Target, http_json, http_ok, ratios, wait_until
from .loadgen import have_wrk, run_load
from .redis_micro import redis_benchmark, round_trips
from .redis_text import UNDER_LOAD, breakdown_table, counting_table, projection
from .replicas import NEW, NOOP, RedisServer, Replicas, children_cpu_s, cpu_of, drain, serve_proc
from .sqlite_paired import run_pairs

__all__ = ["run"]

BODY = '{"input":{"prompt":"hello","n":1}}'
SETS = (0, 1, 2, 4)  # 0: the SQLite single node; n: n replicas on one redis-server
# Short sync retention: the purge of each finished /runsync job falls inside the measured rounds (steady state),
# not after them; the same for every server.
RETENTION = ["--sync-retention-ms", "5000"]
BACKGROUND = ("fcall:tick", "fcall:hooks:claim", "fcall:workers:ping", "fcall:workers:stops")
# A new connection's handshake (and a replica's start): paid once per pooled connection, not per job.
CONNECTION = ("HELLO", "CLIENT", "SELECT", "FUNCTION", "SUBSCRIBE")


def label(n: int) -> str:
    return "SQLite, 1 serve" if n == 0 else f"Redis, {n} replica{'s' if n > 1 else ''}"


def _cpu_s(pid: int) -> float:
    return cpu_of([pid])[0]


def _runsync(run: Run, sec: Section, work: Any, redis: RedisServer, tool: str) -> dict[int, Counter[str]]:
    duration, repeats = (0.5, 1) if run.quick else (4.0, 3)
    sqlite, base = serve_proc(NEW, work, "rs-sqlite", target=NOOP, extra=["--no-rate-limits", *RETENTION])
    sets: dict[int, Replicas] = {0: Replicas([sqlite], [base], [])}
    trips: dict[int, Counter[str]] = {n: Counter() for n in SETS}
    try:
        wait_until(lambda: http_ok(f"{base}/health"), 60, "SQLite serve ready", sqlite)
        for n in SETS[1:]:
            sets[n] = Replicas.start(work, redis.url, f"rs{n}", n, extra=RETENTION)
        for n in SETS if not run.quick else ():
            run_load(sets[n].urls("runsync"), BODY, 32, 1.0, tool)  # warm-up
        for r in range(repeats):
            for n in SETS[r % len(SETS) :] + SETS[: r % len(SETS)]:
                reps = sets[n]
                t0 = reps.counts() if n else Counter()
                c0, r0, g0 = cpu_of(reps.pids), _cpu_s(redis.pid), children_cpu_s()
                load = run_load(reps.urls("runsync"), BODY, 32, duration, tool)
                sec.figure("1-minute load average (uptime) after each /runsync load", "load").values.append(
                    os.getloadavg()[0]
                )
                c1, r1, g1 = cpu_of(reps.pids), _cpu_s(redis.pid), children_cpu_s()
                jobs = max(load.requests, 1)
                L = label(n)
                sec.figure(f"/runsync at 32 conn, {L}: requests/s", "req/s").values.append(load.rps)
                sec.figure(f"/runsync at 32 conn, {L}: p99 latency", "ms").values.append(load.p99_ms)
                serve_us = (sum(c1) - sum(c0)) / jobs * 1e6
                sec.figure(f"/runsync CPU per job: serve (all replicas), {L}", "µs/job").values.append(serve_us)
                sec.figure(f"/runsync CPU per job: load generator, {L}", "µs/job").values.append((g1 - g0) / jobs * 1e6)
                if n:
                    d = reps.counts() - t0
                    trips[n] += d
                    trips[n]["_jobs"] += jobs
                    sec.figure(f"/runsync CPU per job: redis-server, {L}", "µs/job").values.append(
                        (r1 - r0) / jobs * 1e6
                    )
                    sec.figure(f"/runsync round trips per job under load, {L}", "/job").values.append(
                        sum(d.values()) / jobs
                    )
                run.log(f"redis_state /runsync {L}: {load.rps:,.0f} req/s, serve {serve_us:.0f} µs/job, "
                        f"errors {load.errors}")  # fmt: skip
                if load.errors:
                    sec.notes.append(f"/runsync, {L}: {load.errors} failed requests in round {r}.")
    finally:
        for reps in sets.values():
            reps.stop()
    for n in SETS[1:]:
        rps = sec.figure(f"/runsync at 32 conn, {label(n)}: requests/s", "req/s").values
        one = sec.figure(f"/runsync at 32 conn, {label(1)}: requests/s", "req/s").values
        sq = sec.figure(f"/runsync at 32 conn, {label(0)}: requests/s", "req/s").values
        if n > 1:
            sec.figure(f"/runsync scaling: {n} replicas / 1 replica", "x").values = ratios(rps, one)
        sec.figure(f"/runsync {label(n)} / SQLite", "x").values = ratios(rps, sq)
    return trips


def _drains(run: Run, sec: Section, work: Any, redis: RedisServer) -> dict[int, Counter[str]]:
    n_jobs, repeats = (300, 1) if run.quick else (5_000, 3)
    trips: dict[int, Counter[str]] = {n: Counter() for n in SETS}
    for r in range(repeats):
        for n in SETS[r % len(SETS) :] + SETS[: r % len(SETS)]:
            d = drain(work, NEW, n_jobs, max(n, 1), redis=redis if n else None, tag=f"{n}x{r}")
            sec.figure("1-minute load average (uptime) after each drain", "load").values.append(os.getloadavg()[0])
            L = label(n)
            sec.figure(f"drain, {L}: jobs/s", "jobs/s").values.append(d.rate)
            sec.figure(f"drain CPU per job: serve (all replicas), {L}", "µs/job").values.append(d.serve_us)
            if d.workers_us is not None:
                sec.figure(f"drain CPU per job: workers (one per replica), {L}", "µs/job").values.append(d.workers_us)
            if d.redis_us is not None:
                sec.figure(f"drain CPU per job: redis-server, {L}", "µs/job").values.append(d.redis_us)
                sec.figure(f"drain round trips per job, {L}", "/job").values.append(sum(d.trips.values()) / n_jobs)
                trips[n] += d.trips
                trips[n]["_jobs"] += n_jobs
            run.log(f"redis_state drain {L}: {d.rate:,.0f} jobs/s, serve {d.serve_us:.0f} µs/job")
    one = sec.figure(f"drain, {label(1)}: jobs/s", "jobs/s").values
    for n in SETS[1:]:
        rate = sec.figure(f"drain, {label(n)}: jobs/s", "jobs/s").values
        if n > 1:
            sec.figure(f"drain scaling: {n} replicas / 1 replica", "x").values = ratios(rate, one)
        sec.figure(f"drain {label(n)} / SQLite", "x").values = ratios(rate, sec.figure(f"drain, {label(0)}: jobs/s",
                                                                                       "jobs/s").values)  # fmt: skip
    return trips


def _count(run: Run, work: Any, redis: RedisServer, n: int) -> dict[str, Any]:
    """Item 2: ``n`` replicas with the rate limits on, one job at a time; with two or more, a job's calls cross
    the replicas (submitted on one, its status read on the next). Returns the counts by call of each phase, with
    its jobs and seconds."""
    k, idle_s = (10, 0.5) if run.quick else (200, 3.0)
    reps = Replicas.start(work, redis.url, f"rtcount{n}", n, rate_limits=True)
    out: dict[str, Any] = {}
    try:
        for i in range(2 * n):  # warm: each replica's pool has its connections open
            http_json(f"{reps.bases[i % n]}/runsync", b'{"input":{"i":1}}')
        c0, t0 = reps.counts(), time.monotonic()
        time.sleep(idle_s)
        out["idle"] = (reps.counts() - c0, 0, time.monotonic() - t0)
        c0, t0, polls = reps.counts(), time.monotonic(), 0
        for i in range(k):
            job = http_json(f"{reps.bases[i % n]}/run", b'{"input":{"i":1}}')
            while True:
                polls += 1
                st = http_json(f"{reps.bases[(i + 1) % n]}/status/{job['id']}")
                if st["status"] in ("COMPLETED", "FAILED"):
                    break
                time.sleep(0.002)
        out["run"] = (reps.counts() - c0, k, time.monotonic() - t0)
        out["polls"] = polls
        c0, t0 = reps.counts(), time.monotonic()
        for i in range(k):
            st = http_json(f"{reps.bases[i % n]}/runsync", b'{"input":{"i":1}}')
            assert st["status"] == "COMPLETED", st
        out["runsync"] = (reps.counts() - c0, k, time.monotonic() - t0)
    finally:
        reps.stop()
    return out


def _goals(sec: Section, counted: dict[str, Any], n: int) -> dict[str, float]:
    """Round trips per job of each route from the counting run of ``n`` replicas: the background calls (ticks,
    webhook outbox polls, pings, stop polls) and the connections' handshakes apart."""
    run_c, k, _ = counted["run"]
    sync_c, k2, _ = counted["runsync"]
    polls = counted["polls"]
    per_status = (run_c["fcall:ratelimit:status"] + run_c["fcall:read:status"]) / polls
    apart = (*BACKGROUND, *CONNECTION)
    run_job = sum(v for key, v in run_c.items() if key not in apart and "status" not in key) / k + per_status
    sync_job = sum(v for key, v in sync_c.items() if key not in apart) / k2
    for name, value, bound in (("/run job (with one /status)", run_job, 8.0), ("/runsync job", sync_job, 6.0)):
        t = Target(f"Redis round trips per {name}, {label(n)}, rate limits on", sec.figure(
            f"round trips per {name}, counted, {label(n)}", "/job"), bound, "<=")  # fmt: skip
        t.ratio.values = [value]
        sec.targets.append(t)
    return {"run": run_job, "runsync": sync_job, "status": per_status}


TITLE = "12. Redis store: replicas on one redis-server, round trips, CPU per job"
COUNTED = ", counted, "  # in the names of item 2's figures


def run(run: Run) -> Section:
    if os.environ.get("BENCH_REDIS_ONLY") == "counts":
        return _counts_only(run)
    sec = Section("redis_state", TITLE)
    tool = run.loadgen if run.loadgen != "auto" else ("wrk" if have_wrk() else "async")
    work = run.dir("redis_state")
    sec.params = {
        "connections": 32,
        "body": BODY,
        "handler": f"{NOOP} (concurrency 100)",
        "load_generator": "wrk -t1 per replica" if tool == "wrk" else "one async aiohttp client process",
        "sync_retention_ms": 5000,
        "drain_jobs": 300 if run.quick else 5_000,
        "replicas": list(SETS[1:]),
    }
    redis = RedisServer(work)
    try:
        rs_trips = _runsync(run, sec, work, redis, tool)
        counted = {n: _count(run, work, redis, n) for n in SETS[1:]}
        dr_trips = _drains(run, sec, work, redis)
        redis.cli("FLUSHALL")
        micro = asyncio.run(round_trips(redis.url, jobs=20 if run.quick else 200))
        bench = redis_benchmark(redis.url, requests=2_000 if run.quick else 30_000, rounds=1 if run.quick else 3)
        redis.cli("FLUSHALL")
    finally:
        redis.stop()
    goals = {n: _goals(sec, counted[n], n) for n in SETS[1:]}
    sec.figure("engine alone (no serve): round trips per /run job with one stream item and /stream", "/job").values = [
        micro["run+stream"]
    ]
    for name, (rps, usec) in bench.items():
        sec.figure(f"redis-benchmark -c 50: {name}", "req/s").values = [rps]
        sec.figure(f"redis-benchmark: µs per call inside redis-server, {name}", "µs").values = [usec]
    sec.text.append(breakdown_table(counted, rs_trips, dr_trips))
    run_pairs(run, sec, tool)
    sec.text.append(projection(sec, counted, bench, goals))
    sec.notes += _notes(goals, counted)
    sec.plot = _plot(run, sec)
    return sec


_AGAIN = "Item 2, the counting runs"


def _figure(d: dict[str, Any]) -> Figure:
    return Figure(d["name"], d["unit"], list(d["values"]))


def _counts_only(run: Run) -> Section:
    """Item 2 again, alone, onto the section of the last full run (results.json): its counted figures, their
    targets, the counting half of the breakdown and its note replaced; everything else kept, with a note."""
    path = run.out / "results.json"
    old = json.loads(path.read_text())["sections"].get("redis_state") if path.exists() else None
    if old is None:
        raise RuntimeError("BENCH_REDIS_ONLY=counts updates a full run's section: run redis_state in full first")
    full = old["params"].get("other_figures_from_run_of", old["date"])
    params = {**old["params"], "other_figures_from_run_of": full}
    notes = [x for x in old["notes"] if not x.startswith(_AGAIN)]
    sec = Section("redis_state", TITLE, params=params, notes=notes, plot=old["plot"])
    sec.figures = [_figure(f) for f in old["figures"]]
    for f in sec.figures:
        if COUNTED in f.name:
            f.values = []
    work = run.dir("redis_state")
    redis = RedisServer(work)
    try:
        counted = {n: _count(run, work, redis, n) for n in SETS[1:]}
    finally:
        redis.stop()
    goals = {n: _goals(sec, counted[n], n) for n in SETS[1:]}
    fresh, sec.targets = sec.targets, []
    for t in old["targets"]:
        if t["label"].startswith("Redis round trips per "):
            sec.targets += fresh
            fresh = []
        else:
            sec.targets.append(Target(t["label"], _figure(t["ratio"]), t["bound"], t["op"]))
    sec.targets += fresh
    breakdown, *rest = old["text"]
    sec.text = [counting_table(counted) + "\n\n" + breakdown[breakdown.index(UNDER_LOAD) :], *rest]
    mine = next(x for x in _notes(goals, counted) if x.startswith("Round trips per job in the counting runs"))
    sec.notes = [mine if x.startswith("Round trips per job in the counting runs") else x for x in sec.notes]
    sec.notes.append(
        f"{_AGAIN} (the counted round trips, their targets and the first breakdown table), was run again alone at "
        f"{sec.date} (BENCH_REDIS_ONLY=counts); every other figure, table and note is from the full run of {full}."
    )
    return sec


def _notes(goals: dict[int, dict[str, float]], counted: dict[int, dict[str, Any]]) -> list[str]:
    cores = os.cpu_count() or 1
    per = "; ".join(
        f"{label(n)}: /run {goals[n]['run']:.2f} ({goals[n]['status']:.2f} per /status call), /runsync "
        f"{goals[n]['runsync']:.2f}"
        for n in sorted(goals)
    )
    return [
        f"This machine has {cores} cores, shared with other processes: every serve replica, its in-process worker, "
        "redis-server, the drain's workers and the load generator compete for them, so the replica figures here "
        "are CPU-bound and say nothing of how replicas on separate machines scale. That is the projection below, "
        "from the CPU each process spends per job.",
        f"Round trips per job in the counting runs ({counted[1]['run'][1]} jobs per route, one at a time, rate "
        f"limits on), a /run job with its /status read: {per}. The per-call breakdown is in the table below.",
        "Round trips are counted inside each serve process (benchmarks/rt_count.py: one per write to a Redis "
        "connection, so a pipeline or an FCALL is one), summed over the replicas; the HTTP workers of the drain "
        "talk to serve, never to Redis, so serve's counts are all of them.",
        "CPU per job is each process's /proc/PID/stat time (user + system, all threads) over the measured load, "
        "divided by the jobs it carried; the load generator's is its own (RUSAGE_CHILDREN once it has exited). "
        "The drain's serve figure counts from the end of the pre-load to the last job; its workers' from their "
        "first finished job.",
    ]


def _plot(run: Run, sec: Section) -> str | None:
    from .report import bar_plot

    names = [label(n) for n in SETS]
    rates = {
        "/runsync 32 conn (req/s)": [sec.figure(f"/runsync at 32 conn, {L}: requests/s", "req/s") for L in names],
        "drain (jobs/s)": [sec.figure(f"drain, {L}: jobs/s", "jobs/s") for L in names],
    }
    cpu = {
        "serve (all replicas)": [
            sec.figure(f"/runsync CPU per job: serve (all replicas), {L}", "µs/job") for L in names
        ],
        "redis-server": [None, *(sec.figure(f"/runsync CPU per job: redis-server, {L}", "µs/job") for L in names[1:])],
        "load generator": [sec.figure(f"/runsync CPU per job: load generator, {L}", "µs/job") for L in names],
    }
    return bar_plot(
        run,
        "redis_state",
        "SQLite single node vs serve replicas on one redis-server (2 shared cores)",
        [("jobs/s", names, rates), ("/runsync CPU µs per job, by process", names, cpu)],
    )
