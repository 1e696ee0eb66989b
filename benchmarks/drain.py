"""Benchmark 2: draining a pre-loaded queue over the HTTP worker protocol, and the store's own ceiling.

A pure-queue serve (no TARGET, ``--no-rate-limits``) is pre-loaded with N jobs through /run; then 1 or 2
``python -m handler_sdk.worker benchmarks/noop_handler.py`` processes drain it. The handler's concurrency is
above 1, so the worker uses job-take-batch, and the results that finish while one job-done-batch request is in
flight leave together in the next (the done-batch extension the endpoint announces). The drain rate is
N / (last job's end - first job's start), read from the endpoint's own timestamps (/requests), so process start-up
and the pre-load are not counted. Each round also reads the CPU time the endpoint and the workers spent per job
(/proc), which says which process to look at when a target is missed.

The store's ceiling drives the same state changes (take, then done) straight through ``Broker`` and
``JobStore`` in one process, in batches of the worker's concurrency with one journal flush per batch, no HTTP.
A second figure adds the submits (submit -> take -> done) for the whole lifecycle.

Targets: drain jobs/s >= 1.5 x the bare aiohttp server's requests/s (benchmark 1 (b), 32 connections), and
>= 0.7 x the store's ceiling.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from handler_sdk import loop as event_loop

from .common import PY, Figure, Proc, Run, Section, Target, free_port, http_ok, ratios, serve_cmd, stop_all, wait_until
from .loadgen import have_wrk, run_load
from .profile import profile_pid, summarize

__all__ = ["run", "store_ceiling"]

CONCURRENCY = 100  # the worker's slots, hence its take batch size; also the ceiling's batch size
INPUT = {"prompt": "hello", "n": 1}
# The profiled drain lasts this long at the measured 1-worker rate: py-spy's 3 s window from 0.5 s in, and slack.
PROFILE_DRAIN_S = 5.0
# Serve and the workers on uvloop (their default where installed), then on asyncio's own loop.
LOOPS = ("uvloop", "asyncio")


async def _preload(base: str, n: int, connections: int = 64) -> None:
    body = orjson.dumps({"input": INPUT})
    headers = {"Content-Type": "application/json"}
    left = iter(range(n))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as s:

        async def one() -> None:
            for _ in left:
                async with s.post(f"{base}/run", data=body, headers=headers) as r:
                    if r.status != 200:
                        raise RuntimeError(f"/run answered {r.status}: {await r.text()}")
                    await r.read()

        await asyncio.gather(*(one() for _ in range(connections)))


def _cpu_s(pid: int, thread: int | None = None) -> float | None:
    """CPU seconds (user + system) a process has used so far, every thread, or only ``thread`` (a thread id; the
    main thread's is the pid); None without /proc."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    try:
        fields = stat.read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class _WorkerCpu:
    """The workers' CPU time from their first finished job on (their start-up excluded), and the jobs since."""

    start_s: float | None = None
    end_s: float | None = None
    jobs_before: int = 0

    def per_job_us(self, n: int) -> float | None:
        if self.start_s is None or self.end_s is None or n <= self.jobs_before:
            return None
        return (self.end_s - self.start_s) / (n - self.jobs_before) * 1e6


def _total_cpu_s(procs: list[Proc]) -> float | None:
    times = [_cpu_s(p.pid) for p in procs]
    return None if any(t is None for t in times) else sum(t for t in times if t is not None)


async def _wait_drained(base: str, n: int, timeout: float, workers: list[Proc], cpu: _WorkerCpu | None = None) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            async with s.get(f"{base}/health") as r:
                jobs = (await r.json())["jobs"]
            finished = jobs["completed"] + jobs["failed"]
            if cpu is not None and cpu.start_s is None and finished:
                cpu.start_s, cpu.jobs_before = _total_cpu_s(workers), finished
            if finished >= n:
                if cpu is not None:
                    cpu.end_s = _total_cpu_s(workers)
                if jobs["failed"]:
                    raise RuntimeError(f"{jobs['failed']} jobs failed while draining")
                return
            for w in workers:
                w.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"queue not drained within {timeout:.0f}s: {jobs}")
            await asyncio.sleep(0.1)


async def _span_ms(base: str, n: int) -> tuple[int, int]:
    """(first start, last end) in epoch ms over every job, from /requests (createdAt + delayTime, + executionTime)."""
    first, last, seen = None, None, 0
    async with aiohttp.ClientSession() as s:
        for offset in range(0, n, 500):
            async with s.get(f"{base}/requests", params={"limit": "500", "offset": str(offset)}) as r:
                rows = (await r.json())["requests"]
            for row in rows:
                started = row["createdAt"] + row["delayTime"]
                ended = started + row["executionTime"]
                first = started if first is None else min(first, started)
                last = ended if last is None else max(last, ended)
                seen += 1
    if first is None or last is None or seen < n:
        raise RuntimeError(f"/requests listed {seen} of {n} jobs")
    return first, last


def extensions(base: str) -> str:
    """The worker-protocol extensions the endpoint announces (the X-Handler-SDK header on worker replies)."""
    import urllib.request

    with urllib.request.urlopen(f"{base}/ping/bench-probe", timeout=10) as r:
        return str(r.headers.get("X-Handler-SDK", "none"))


@dataclass
class _Drain:
    """One drain round: its rate, the CPU time per job of the endpoint and of the workers, a profile if asked."""

    rate: float
    serve_us: float | None = None
    workers_us: float | None = None
    profile: str | None = None
    # The endpoint's event loop (its main thread) alone: the rest of serve_us is its journal writer's thread.
    loop_us: float | None = None


def _drain_once(run: Run, work: Path, n: int, workers: int, profile: bool = False, loop: str = "uvloop") -> _Drain:
    """One drain of ``n`` jobs by ``workers`` processes on a fresh endpoint, serve and workers on ``loop``."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/v2/local"
    tag = f"w{workers}-{loop}-{time.monotonic_ns()}"
    serve = Proc(
        serve_cmd(None, port, work / f"serve-{tag}"),
        log=work / f"serve-{tag}.log",
        env={"HANDLER_SDK_LOOP": loop},
    )
    procs: list[Proc] = []
    try:
        wait_until(lambda: http_ok(f"{base}/health"), 30, "drain serve ready", serve)
        run.shared.setdefault("drain_extensions", extensions(base))
        asyncio.run(_preload(base, n))
        serve_cpu, loop_cpu = _cpu_s(serve.pid), _cpu_s(serve.pid, serve.pid)
        for i in range(workers):
            env: dict[str, str | None] = {
                "HANDLER_SDK_ENDPOINT_URL": base,
                "HANDLER_SDK_WORKER_ID": f"drain-{i}",
                "HANDLER_SDK_SPOOL_DIR": str(work / f"spool-{tag}-{i}"),
                "HANDLER_SDK_LOG_LEVEL": "WARNING",
                "BENCH_CONCURRENCY": str(CONCURRENCY),
                "HANDLER_SDK_LOOP": loop,
            }
            procs.append(
                Proc(
                    [PY, "-m", "handler_sdk.worker", "benchmarks/noop_handler.py"],
                    env=env,
                    log=work / f"worker-{tag}-{i}.log",
                )
            )
        summary = _profile(work, tag, serve, procs[0], workers) if profile else None
        cpu = _WorkerCpu()
        asyncio.run(_wait_drained(base, n, 600, procs, cpu))
        serve_end, loop_end = _cpu_s(serve.pid), _cpu_s(serve.pid, serve.pid)
        first, last = asyncio.run(_span_ms(base, n))
        serve_us = None if serve_cpu is None or serve_end is None else (serve_end - serve_cpu) / n * 1e6
        loop_us = None if loop_cpu is None or loop_end is None else (loop_end - loop_cpu) / n * 1e6
        rate = n / max((last - first) / 1000, 1e-3)
        return _Drain(rate, serve_us, None if profile else cpu.per_job_us(n), summary, loop_us)
    finally:
        stop_all(procs, 1.0)  # a worker waits out its held take (3 s) before it exits; nothing to keep
        serve.stop(10)


def _cpu_bound(sec: Section, worker_counts: Sequence[int]) -> str | None:
    """What the measured CPU per job allows on this machine's cores, set against the ceiling target."""
    w = worker_counts[0]
    who = f"{w} worker process{'es' if w > 1 else ''}"
    medians = {f.name: f.median for f in sec.figures if f.values}
    serve = medians.get(f"CPU per job: endpoint (serve), {who}", 0.0)
    workers = medians.get(f"CPU per job: the worker processes together, {who}", 0.0)
    ceiling = medians.get("store ceiling: take -> done, batched, no HTTP", 0.0)
    cores = os.cpu_count() or 1
    if not (serve > 0 and workers > 0 and ceiling > 0):
        return None
    bound = cores / (serve + workers) * 1e6
    text = (
        f"With {who}, a job costs {serve:.1f} µs of endpoint CPU and {workers:.1f} µs of worker CPU: on "
        f"{cores} cores no drain can beat {bound:,.0f} jobs/s, {bound / ceiling:.2f} x the store's ceiling. "
        "The 0.7 x ceiling target needs the two together under "
        f"{cores / (0.7 * ceiling) * 1e6:.1f} µs per job."
    )
    loop = medians.get(f"CPU per job: the endpoint's event loop thread alone, {who}", 0.0)
    rate = medians.get(f"drain over HTTP, {who}", 0.0)
    if loop > 0 and rate > 0:
        # CPU per job x jobs per second: the share of the drain each thread spent running.
        busy = [x * rate / 1e4 for x in (loop, serve - loop, workers)]
        text += (
            f" Over the drain (CPU per job x its rate) the endpoint's event loop ran {busy[0]:.0f} % of the time, "
            f"its other threads (the journal writer) {busy[1]:.0f} %, and the worker{'s' if w > 1 else ''} "
            f"{busy[2]:.0f} %"
        )
        text += (
            ": no thread is saturated, so the drain waits on the round trips between the processes (and on the "
            "machine's cores, shared by three busy threads), not on any one thread's CPU."
            if max(busy) < 90
            else "."
        )
    return text


def _note_cpu(cpu: dict[str, list[float]], workers: int, d: _Drain) -> None:
    who = f"{workers} worker process{'es' if workers > 1 else ''}"
    if d.serve_us is not None:
        cpu.setdefault(f"CPU per job: endpoint (serve), {who}", []).append(d.serve_us)
    if d.loop_us is not None:
        cpu.setdefault(f"CPU per job: the endpoint's event loop thread alone, {who}", []).append(d.loop_us)
    if d.workers_us is not None:
        cpu.setdefault(f"CPU per job: the worker processes together, {who}", []).append(d.workers_us)


def _cpu_text(d: _Drain) -> str:
    if d.serve_us is None or d.workers_us is None:
        return ""
    return f" (CPU per job: serve {d.serve_us:.1f} µs, workers {d.workers_us:.1f} µs)"


def _profile(work: Path, tag: str, serve: Proc, worker: Proc, workers: int) -> str:
    """Sample the endpoint and one worker at the same time for 3 s, from just past the worker's start-up."""
    time.sleep(0.5)
    outs: dict[str, Path | None] = {}

    def sample(name: str, p: Proc) -> None:
        outs[name] = profile_pid(p.pid, 3, work / f"{name}-{tag}.pyspy.txt")

    threads = [threading.Thread(target=sample, args=(nm, p)) for nm, p in (("serve", serve), ("worker", worker))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return "\n\n".join(
        [
            summarize(outs.get("serve"), title=f"the endpoint (serve) while {workers} worker(s) drain"),
            summarize(outs.get("worker"), title="one worker process while draining"),
        ]
    )


# --- the store's ceiling -------------------------------------------------------------------------------------


async def _ceiling(path: Path, n: int, batch: int) -> tuple[float, float]:
    """(take->done jobs/s, submit->take->done jobs/s) straight through Broker + JobStore, batched, no HTTP."""
    from handler_sdk.models import JobStatus, RunRequest
    from handler_sdk.serve.state.broker import Broker
    from handler_sdk.serve.state.store import JobStore

    output = orjson.dumps(INPUT)

    async def lifecycle(broker: Broker, submit: bool) -> float:
        t0 = time.perf_counter()
        done = 0
        while done < n:
            k = min(batch, n - done)
            if submit:
                for _ in range(k):
                    broker.submit(RunRequest.model_validate({"input": INPUT}))
                await broker.durable()
            taken = await broker.take("ceiling", k)
            for r in taken:
                broker.done("ceiling", r.id, JobStatus.COMPLETED, output=output)
            await broker.durable()
            done += len(taken)
        return n / (time.perf_counter() - t0)

    store = JobStore(path / "pre.sqlite3")
    broker = Broker(store)
    await broker.open()
    try:
        for start in range(0, n, 1000):  # pre-load, untimed, as the HTTP drain's queue is
            for _ in range(min(1000, n - start)):
                broker.submit(RunRequest.model_validate({"input": INPUT}))
            await broker.durable()
        take_done = await lifecycle(broker, submit=False)
    finally:
        await store.close()
    store = JobStore(path / "full.sqlite3")
    broker = Broker(store)
    await broker.open()
    try:
        full = await lifecycle(broker, submit=True)
    finally:
        await store.close()
    return take_done, full


def store_ceiling(work: Path, n: int, batch: int = CONCURRENCY, loop: str = "uvloop") -> tuple[float, float]:
    d = work / f"ceiling-{time.monotonic_ns()}"
    d.mkdir(parents=True)
    return event_loop.run(_ceiling(d, n, batch), loop)


# --- the benchmark -------------------------------------------------------------------------------------------


def _drain_label(workers: int) -> str:
    return f"drain over HTTP, {workers} worker process{'es' if workers > 1 else ''}"


def _bare_rate(run: Run, work: Path, repeats: int, duration: float, loop: str) -> list[float]:
    """The bare aiohttp server's /runsync rate at 32 connections on ``loop``: from benchmark 1 when it ran, else
    measured."""
    if f"bare_rps_32_{loop}" in run.shared:
        return list(run.shared[f"bare_rps_32_{loop}"])
    port = free_port()
    bare = Proc(
        [PY, "-m", "benchmarks.bare_server", "--port", str(port)],
        log=work / f"bare-{loop}.log",
        env={"HANDLER_SDK_LOOP": loop},
    )
    url = f"http://127.0.0.1:{port}/v2/local/runsync"
    body = '{"input":{"prompt":"hello","n":1}}'
    tool = run.loadgen if run.loadgen != "auto" else ("wrk" if have_wrk() else "async")
    try:
        wait_until(lambda: http_ok(url, body.encode()), 30, "bare server ready", bare)
        run_load(url, body, 32, 1.0, tool)
        return [run_load(url, body, 32, duration, tool).rps for _ in range(repeats)]
    finally:
        bare.stop()


_Rates = dict[str, dict[int, list[float]]]  # loop -> worker count -> drain rates, per round


def _rounds(
    run: Run, work: Path, n: int, repeats: int, worker_counts: Sequence[int]
) -> tuple[_Rates, dict[str, list[float]], list[float], dict[str, list[float]]]:
    """Every drain on each loop, and the store's ceiling (take -> done) in the same rounds; the full ceiling
    (submit -> take -> done) and the CPU per job on uvloop."""
    drains: _Rates = {lp: {w: [] for w in worker_counts} for lp in LOOPS}
    ceilings: dict[str, list[float]] = {lp: [] for lp in LOOPS}
    cpu: dict[str, list[float]] = {}
    full: list[float] = []
    for r in range(repeats):
        for lp in LOOPS if r % 2 == 0 else tuple(reversed(LOOPS)):
            ceil_a, ceil_b = store_ceiling(work, n, loop=lp)
            ceilings[lp].append(ceil_a)
            if lp == "uvloop":
                full.append(ceil_b)
            run.log(f"drain [{lp}] store ceiling: take->done {ceil_a:,.0f} jobs/s, submit->take->done {ceil_b:,.0f}")
            for w in worker_counts if r % 2 == 0 else tuple(reversed(worker_counts)):
                d = _drain_once(run, work, n, w, loop=lp)
                drains[lp][w].append(d.rate)
                if lp == "uvloop":
                    _note_cpu(cpu, w, d)
                run.log(f"drain [{lp}] {w} worker(s): {d.rate:,.0f} jobs/s{_cpu_text(d)}")
    return drains, ceilings, full, cpu


def _targets(
    run: Run, sec: Section, work: Path, repeats: int, drains: _Rates, ceilings: dict[str, list[float]]
) -> None:
    """Each drain against the bare server and against the store's ceiling, on each loop."""
    for lp in LOOPS:
        tag = "" if lp == "uvloop" else f" [{lp}]"
        name = f"bare aiohttp server /runsync at 32 conn (benchmark 1 (b)){tag}"
        sec.figure(name, "req/s").values = _bare_rate(run, work, repeats, 0.5 if run.quick else 3.0, lp)
        bare_med = sec.figure(name, "req/s").median
        for w, rates in drains[lp].items():
            t = Target(
                f"drain with {w} worker(s) / bare server req/s{tag}",
                sec.figure(f"ratio drain {w}w / bare{tag}", "x"),
                1.5,
            )
            # The bare server ran in other rounds (or in benchmark 1), so each drain round is set against its median.
            t.ratio.values = [x / bare_med for x in rates]
            sec.targets.append(t)
            t = Target(
                f"drain with {w} worker(s) / store ceiling{tag}",
                sec.figure(f"ratio drain {w}w / ceiling{tag}", "x"),
                0.7,
            )
            t.ratio.values = ratios(rates, ceilings[lp])
            sec.targets.append(t)


def run(run: Run) -> Section:
    sec = Section("drain", "2. Queue drain over the HTTP worker protocol")
    n = 600 if run.quick else 20_000
    repeats = 1 if run.quick else 3
    worker_counts = (1, 2)
    work = run.dir("drain")
    sec.params = {
        "loops": "uvloop, and every drain with its ceiling and yardstick again on asyncio",
        "jobs": n,
        "repeats": repeats,
        "workers": list(worker_counts),
        "worker_concurrency": CONCURRENCY,
        "handler": "benchmarks/noop_handler.py",
        "store_batch": CONCURRENCY,
    }
    drains, ceilings, full, cpu = _rounds(run, work, n, repeats, worker_counts)
    sec.figure("store ceiling: take -> done, batched, no HTTP", "jobs/s").values = ceilings["uvloop"]
    sec.figure("store ceiling: submit -> take -> done, batched, no HTTP", "jobs/s").values = full
    for w in worker_counts:
        sec.figure(_drain_label(w), "jobs/s").values = drains["uvloop"][w]
    for name, values in cpu.items():
        sec.figure(name, "µs/job").values = values
    sec.figure("[asyncio] store ceiling: take -> done", "jobs/s").values = ceilings["asyncio"]
    for w in worker_counts:
        sec.figure(f"[asyncio] {_drain_label(w)}", "jobs/s").values = drains["asyncio"][w]
    _targets(run, sec, work, repeats, drains, ceilings)
    sec.notes.append(
        "Serve, the workers, the store's ceiling and the bare server run on uvloop (the default where installed) in "
        "every figure not marked [asyncio]; the [asyncio] ones ran with HANDLER_SDK_LOOP=asyncio in the same rounds "
        "(the bare server's in benchmark 1's, when it ran first)."
    )
    if run.profile and not all(t.passed for t in sec.targets):
        # A timed drain ends in about a second, before py-spy has sampled much: the profiled one drains more jobs,
        # enough to outlast the sampling window.
        jobs = max(n, round(statistics.median(drains["uvloop"][1]) * PROFILE_DRAIN_S)) if drains["uvloop"][1] else n
        sec.profile = _drain_once(run, work, jobs, 1, profile=True).profile
    best = max(sec.figure(_drain_label(w), "jobs/s").median for w in worker_counts)
    ceiling = sec.figure("store ceiling: take -> done, batched, no HTTP", "jobs/s").median
    sec.notes.append(
        f"Per job the drain takes about {1e6 / best:.0f} µs (1 / throughput, best of 1 and 2 workers) against "
        f"{1e6 / ceiling:.0f} µs for the same state changes in the store's ceiling."
    )
    sec.notes.append(
        f"The endpoint announces `X-Handler-SDK: {run.shared.get('drain_extensions')}`: the worker takes in "
        "batches (job-take-batch) with two takes in flight (take-pipeline), each for half of its 100 slots, so the "
        "next batch is on its way while the last one runs; it sends the results that finish while one "
        "job-done-batch request is in flight together in the next one, which the endpoint commits at once."
    )
    sec.notes.append(
        "CPU time per job (from /proc): the endpoint's is every thread of the serve process (event loop and "
        "journal writer) over the drain; the workers' is counted from their first finished job (start-up "
        "excluded), summed over the worker processes. Their sum over the machine's cores bounds the drain rate."
    )
    bound = _cpu_bound(sec, worker_counts)
    if bound is not None:
        sec.notes.append(bound)
    sec.notes.append(
        "The drain rate counts from the first job's start to the last job's end as the endpoint recorded them, so "
        "worker start-up and the pre-load are excluded. Each round uses a fresh endpoint and journal."
    )
    sec.plot = _plot(run, sec, worker_counts)
    return sec


def _plot(run: Run, sec: Section, worker_counts: tuple[int, ...]) -> str | None:
    from .report import bar_plot

    series: dict[str, list[Figure | None]] = {
        "store ceiling (take->done)": [sec.figure("store ceiling: take -> done, batched, no HTTP", "jobs/s")],
        "bare aiohttp req/s (1b)": [sec.figure("bare aiohttp server /runsync at 32 conn (benchmark 1 (b))", "req/s")],
    }
    for w in worker_counts:
        series[f"drain, {w} worker(s)"] = [sec.figure(_drain_label(w), "jobs/s")]
    return bar_plot(
        run,
        "drain",
        "Queue drain over HTTP vs the store's ceiling",
        [("jobs/s (req/s for the bare server)", [f"{sec.params['jobs']:,} jobs"], series)],
    )
