"""The Redis benchmark's tables: round trips by call, and the projection to N serve machines on one Redis."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from .common import Section, fmt

__all__ = ["UNDER_LOAD", "breakdown_table", "counting_table", "projection"]

# What each call is, in the order a job meets them.
CALLS = {
    "fcall:ratelimit:run": "/run's rate limit",
    "fcall:ratelimit:runsync": "/runsync's rate limit",
    "fcall:submit": "submit (/run, /runsync)",
    "fcall:take": "take (in-process worker or HTTP job-take; an empty take counts too)",
    "fcall:wake": "a wake passed on (it reached a replica that could not use it)",
    "fcall:stream": "stream items",
    "fcall:done": "done",
    "fcall:ratelimit:status": "/status's rate limit",
    "fcall:read:status": "read the record (/status; /runsync once its end is announced)",
    "fcall:read:health": "read /health (the drain's own polling)",
    "fcall:read:requests": "read /requests (the drain's timestamps)",
    "fcall:tick": "background: deadlines tick (every 50 ms per replica)",
    "fcall:hooks:claim": "background: webhook outbox poll",
    "fcall:workers:ping": "background: in-process worker's lease ping",
    "fcall:workers:stops": "background: in-process worker's stop poll",
}
SETS = (1, 2, 4)


def _cell(c: Counter[str], key: str, n: float) -> str:
    return "n/a" if not n else fmt(c[key] / n) if c[key] else "0"


def _table(cols: list[tuple[str, Counter[str], float]]) -> list[str]:
    """One row per call, one column per (header, counts, divisor), and a row of the totals."""
    seen = {x for _, c, _ in cols for x in c} - {"_jobs"}
    keys = [*(k for k in CALLS if k in seen), *sorted(seen - set(CALLS))]
    rows = ["| call | " + " | ".join(h for h, _, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for key in keys:
        cells = [_cell(c, key, n) for _, c, n in cols]
        if any(x not in ("0", "n/a") for x in cells):
            rows.append(f"| {CALLS.get(key, key)} (`{key}`) | " + " | ".join(cells) + " |")
    tot = [fmt(sum(v for x, v in c.items() if x != "_jobs") / n) if n else "n/a" for _, c, n in cols]
    return [*rows, "| **all** | " + " | ".join(tot) + " |"]


# Where the under-load half of the breakdown starts (a counts-only run keeps that half as it was).
UNDER_LOAD = "**Under load**"


def counting_table(counted: dict[int, dict[str, Any]]) -> str:
    """Round trips per job by call in the counting runs (one job at a time)."""
    one = counted[SETS[0]]
    cols: list[tuple[str, Counter[str], float]] = []
    for n in SETS:
        c = counted[n]
        cols += [(f"/run + /status, {n} repl.", c["run"][0], c["run"][1]),
                 (f"/runsync, {n} repl.", c["runsync"][0], c["runsync"][1])]  # fmt: skip
    cols.append((f"idle, {SETS[-1]} repl., per second", counted[SETS[-1]]["idle"][0], counted[SETS[-1]]["idle"][2]))
    polls = ", ".join(f"{counted[n]['polls']}" for n in SETS)
    intro = (
        f"Redis round trips per job by call, summed over the replicas. **Counting runs** (rate limits on, one job "
        f"at a time, {one['run'][1]} jobs per route): each /run job is submitted on one replica and its /status "
        f"polled on the next until it ends ({polls} /status calls in all for 1, 2, 4 replicas: the /status rows "
        "are per job, not per call); the goals leave out the background calls and the connection handshakes. "
        "A queued job wakes one idle taker (the one idle longest, on whichever replica), so it costs one take "
        "however many replicas are idle; the idle column's takes are held takes asking again as their holds end."
    )
    return "\n".join([intro, "", *_table(cols)])


def breakdown_table(
    counted: dict[int, dict[str, Any]], rs: dict[int, Counter[str]], dr: dict[int, Counter[str]]
) -> str:
    """Round trips per job by call: the counting runs (one job at a time), then under load (/runsync, drain)."""
    load = [(f"/runsync under load, {n} repl.", rs[n], rs[n]["_jobs"]) for n in SETS]
    load += [(f"drain, {n} repl.", dr[n], dr[n]["_jobs"]) for n in SETS]
    under = (
        f"{UNDER_LOAD} (the rounds of /runsync at 32 connections and of the drains, rate limits off): every call "
        "the replicas made during the measured load, background and new pool connections included, over the jobs "
        "finished. The drain's submits came before it (the pre-load), so its columns hold the worker side only."
    )
    return "\n".join([counting_table(counted), "", under, "", *_table(load)])


def _median(sec: Section, name: str) -> float:
    for f in sec.figures:
        if f.name == name:
            return f.median
    return float("nan")


def projection(
    sec: Section, counted: dict[int, dict[str, Any]], bench: dict[str, tuple[float, float]], goals: Any
) -> str:
    """The jobs/s one Redis carries (its CPU per job; redis-benchmark's rates for the same call mix) against what
    N serve machines offer (their CPU per job, which grows with the replicas: each reads every job's changes),
    for /runsync and for the drain."""
    cores = os.cpu_count() or 1
    sync_c, k2, _ = counted[1]["runsync"]
    rl = sum(v for x, v in sync_c.items() if x.startswith("fcall:ratelimit")) / k2
    other = goals[1]["runsync"] - rl
    nan = (float("nan"), float("nan"))
    (rb_rl, us_rl), (rb_sub, us_sub) = bench.get("FCALL ratelimit", nan), bench.get("FCALL submit", nan)
    rb_ceiling = 1 / (rl / rb_rl + other / rb_sub) if rb_rl and rb_sub else float("nan")
    in_redis = 1e6 / (rl * us_rl + other * us_sub) if us_rl and us_sub else float("nan")
    hi = SETS[-1]
    rows = [
        "| route | redis-server CPU per job | one Redis core carries | serve CPU per job, 1 replica (+ workers) | "
        f"serve CPU added per job by each further replica | N = 1, 2, 4, 8, 16 machines of {cores} cores: jobs/s | "
        "as N grows: jobs/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for route, kind, workers in (("/runsync", "/runsync", False), ("drain (/run, HTTP worker)", "drain", True)):
        redis_us = _median(sec, f"{kind} CPU per job: redis-server, Redis, 1 replica")
        serve = {n: _median(sec, f"{kind} CPU per job: serve (all replicas), Redis, {n} replica{'s' if n > 1 else ''}")
                 for n in (1, hi)}  # fmt: skip
        own = serve[1] + (_median(sec, f"{kind} CPU per job: workers (one per replica), Redis, 1 replica") if workers
                          else 0.0)  # fmt: skip
        fan = max((serve[hi] - serve[1]) / (hi - 1), 0.0)
        ceiling = 1e6 / redis_us if redis_us > 0 else float("nan")

        def offered(replicas: int, own: float = own, fan: float = fan) -> float:
            return replicas * 1e6 / (own + fan * (replicas - 1))

        ns = ", ".join(fmt(min(offered(n * cores), ceiling)) for n in (1, 2, 4, 8, 16))
        limit = min(1e6 / fan if fan > 0 else float("inf"), ceiling)
        rows.append(f"| {route} | {fmt(redis_us)} µs | {fmt(ceiling)} jobs/s | {fmt(own)} µs | {fmt(fan)} µs | "
                    f"{ns} | {fmt(limit)} |")  # fmt: skip
    text = (
        "**Projection to N machines.** redis-server runs every script on one core, and an endpoint's keys share one "
        "hash slot (`hsdk:{endpoint}:`), so one endpoint's ceiling is one Redis core: 1e6 / (redis-server CPU µs "
        "per job) jobs/s. On the serve side a job costs `a` µs of CPU in the replica that runs it (HTTP included, "
        "the load generator not), and every other replica pays `b` µs for it too: each reads every job's changes "
        f"on the shared channel. `a` is the 1-replica figure, `b` the "
        f"growth from 1 to {hi} replicas per added replica. R replicas (one per core, R = N x c) carry "
        "R x 1e6 / (a + b(R - 1)) jobs/s, which tends to 1e6 / b as R grows: the broadcast, not the cores, caps "
        "the cluster, and below that one Redis core does. N machines give the smaller of the two."
    )
    check = (
        f"Redis's own ceiling, from redis-benchmark on this machine: a /runsync job's calls ({rl:.0f} rate-limit "
        f"call and {other:.1f} engine calls, FCALL submit standing in for take, done and read: one script on the "
        f"job's hash each) come to about {fmt(rb_ceiling)} jobs/s at redis-benchmark's requests/s ({fmt(rb_rl)} "
        f"and {fmt(rb_sub)}/s at 50 connections, socket handling included, on the shared cores), and to "
        f"{fmt(in_redis)} jobs/s on the scripts' own time inside redis-server ({us_rl:.1f} and {us_sub:.1f} µs per "
        "call, no socket handling). The projection uses the measured redis-server CPU per job instead: the same "
        "scripts with their sockets and the pub/sub deliveries to every replica, under our own load."
    )
    return "\n".join([text, "", *rows, "", check])
