"""The Redis benchmark's tables: round trips by call, and the projection to N serve machines on one Redis."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from .common import Section, fmt

__all__ = ["breakdown_table", "projection"]

# What each call is, in the order a job meets them.
CALLS = {
    "fcall:ratelimit:run": "/run's rate limit",
    "fcall:ratelimit:runsync": "/runsync's rate limit",
    "fcall:submit": "submit (/run, /runsync)",
    "fcall:take": "take (in-process worker or HTTP job-take; an empty take counts too)",
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


def breakdown_table(
    counted: dict[int, dict[str, Any]], rs: dict[int, Counter[str]], dr: dict[int, Counter[str]]
) -> str:
    """Round trips per job by call: the counting runs (one job at a time), then under load (/runsync, drain)."""
    one = counted[SETS[0]]
    cols: list[tuple[str, Counter[str], float]] = []
    for n in SETS:
        c = counted[n]
        cols += [(f"/run + /status, {n} repl.", c["run"][0], c["run"][1]),
                 (f"/runsync, {n} repl.", c["runsync"][0], c["runsync"][1])]  # fmt: skip
    cols.append((f"idle, {SETS[-1]} repl., per second", counted[SETS[-1]]["idle"][0], counted[SETS[-1]]["idle"][2]))
    load = [(f"/runsync under load, {n} repl.", rs[n], rs[n]["_jobs"]) for n in SETS]
    load += [(f"drain, {n} repl.", dr[n], dr[n]["_jobs"]) for n in SETS]
    polls = ", ".join(f"{counted[n]['polls']}" for n in SETS)
    intro = (
        f"Redis round trips per job by call, summed over the replicas. **Counting runs** (rate limits on, one job "
        f"at a time, {one['run'][1]} jobs per route): each /run job is submitted on one replica and its /status "
        f"polled on the next until it ends ({polls} /status calls in all for 1, 2, 4 replicas: the /status rows "
        "are per job, not per call); the goals leave out the background calls and the connection handshakes. "
        "The in-process worker of every idle replica wakes for each job and asks for it: one take per replica "
        "per job while the queue runs dry."
    )
    under = (
        "**Under load** (the rounds of /runsync at 32 connections and of the drains, rate limits off): every call "
        "the replicas made during the measured load, background and new pool connections included, over the jobs "
        "finished. The drain's submits came before it (the pre-load), so its columns hold the worker side only."
    )
    return "\n".join([intro, "", *_table(cols), "", under, "", *_table(load)])


def _median(sec: Section, name: str) -> float:
    for f in sec.figures:
        if f.name == name:
            return f.median
    return float("nan")


def projection(
    sec: Section, counted: dict[int, dict[str, Any]], bench: dict[str, tuple[float, float]], goals: Any
) -> str:
    """The jobs/s one Redis carries (its CPU per job; redis-benchmark's rates for the same call mix) against what
    N serve machines offer (their CPU per job), for /runsync and for the drain."""
    cores = os.cpu_count() or 1
    sync_c, k2, _ = counted[1]["runsync"]
    rl = sum(v for x, v in sync_c.items() if x.startswith("fcall:ratelimit")) / k2
    other = goals[1]["runsync"] - rl
    rb_rl = bench.get("FCALL ratelimit", (float("nan"), 0))[0]
    rb_sub = bench.get("FCALL submit", (float("nan"), 0))[0]
    rb_ceiling = 1 / (rl / rb_rl + other / rb_sub) if rb_rl and rb_sub else float("nan")
    rows = [
        "| route | redis-server CPU per job | one Redis core carries | serve CPU per job (+ workers) | one serve core "
        f"carries | machines of {cores} cores to fill one Redis | N = 1, 2, 4, 8, 16 machines: jobs/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for route, redis_fig, serve_figs in (
        ("/runsync", "/runsync CPU per job: redis-server, Redis, 1 replica",
         ["/runsync CPU per job: serve (all replicas), Redis, 1 replica"]),
        ("drain (/run, HTTP worker)", "drain CPU per job: redis-server, Redis, 1 replica",
         ["drain CPU per job: serve (all replicas), Redis, 1 replica",
          "drain CPU per job: workers (one per replica), Redis, 1 replica"]),
    ):  # fmt: skip
        redis_us = _median(sec, redis_fig)
        serve_us = sum(_median(sec, f) for f in serve_figs)
        ceiling = 1e6 / redis_us if redis_us > 0 else float("nan")
        per_core = 1e6 / serve_us if serve_us > 0 else float("nan")
        fill = ceiling / (cores * per_core)
        ns = ", ".join(fmt(min(n * cores * per_core, ceiling)) for n in (1, 2, 4, 8, 16))
        rows.append(f"| {route} | {fmt(redis_us)} µs | {fmt(ceiling)} jobs/s | {fmt(serve_us)} µs | "
                    f"{fmt(per_core)} jobs/s | {fill:.1f} | {ns} |")  # fmt: skip
    text = (
        "**Projection to N machines.** redis-server runs every script on one core, and an endpoint's keys share one "
        "hash slot (`hsdk:{endpoint}:`), so one endpoint's ceiling is one Redis core: 1e6 / (redis-server CPU µs "
        "per job) jobs/s. Each serve machine of c cores carries about c x 1e6 / (serve + worker CPU µs per job) "
        "jobs/s (one replica per core; HTTP included, the load generator not). N machines give min(N x that, the "
        "ceiling). The CPU figures are from the 1-replica rounds (the least contended on this machine)."
    )
    check = (
        f"Redis's own ceiling, from redis-benchmark on this machine: a /runsync job's calls ({rl:.0f} rate-limit "
        f"call at {fmt(rb_rl)}/s and {other:.1f} engine calls at FCALL submit's {fmt(rb_sub)}/s, submit standing in "
        f"for take, done and read: one script on the job's hash each) come to about {fmt(rb_ceiling)} jobs/s. "
        "redis-benchmark's 50 connections pipeline nothing and it shares the cores with nothing of ours, so the "
        "two ceilings bracket what one Redis carries here."
    )
    return "\n".join([text, "", *rows, "", check])
