"""Benchmark 6: dynamic batching, where it pays and what latency it costs.

A stand-in for a GPU model that is not an LLM: each call costs 20 ms plus 0.2 ms per item (``time.sleep`` in the
handler's thread), at concurrency 1 (one GPU). Variants: the plain handler (one job per call, the yardstick), and
``@handler(batch_size=B, batch_wait_ms=10)`` for B = 1, 8 and 32. Each runs under steady open-loop arrivals at 10,
100 and 1,000 jobs/s for a few seconds (jobs are submitted on schedule whether or not earlier ones finished).

Everything runs in this process, through the same code ``serve TARGET`` runs without HTTP: jobs are submitted to
a ``Broker``, pushed to a ``Worker`` over the in-process transport, and their results recorded by the broker.
Latency is submit -> result recorded; throughput is the jobs completed over the time from the first submit to the
last result (jobs still queued a short grace after the arrivals stop are not counted). An overloaded variant's
queue grows for the whole run, so its latencies are those of the jobs that made it, and grow with the run's
length: read them as "unbounded".

Targets: at 1,000 jobs/s, batch size 32 completes >= 10x the jobs/s of batch size 1; at 10 jobs/s (one job at a
time), batch size 32's p50 latency is within batch_wait_ms + 2 ms of the plain handler's.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .common import Run, Section, Target, fmt

__all__ = ["run"]

FIXED_S = 0.020
PER_ITEM_S = 0.0002
WAIT_MS = 10.0
RATES = (10, 100, 1000)
SIZES = (1, 8, 32)
GRACE_S = 0.5


@dataclass
class Variant:
    label: str
    batch_size: int | None  # None: the plain handler

    def make(self, sizes: list[int]) -> Any:
        from handler_sdk import handler

        if self.batch_size is None:

            @handler
            def plain(job: Any) -> Any:
                sizes.append(1)
                time.sleep(FIXED_S + PER_ITEM_S)
                return {"ok": True}

            return plain

        @handler(batch_size=self.batch_size, batch_wait_ms=WAIT_MS)
        def batched(jobs: list[Any]) -> list[Any]:
            sizes.append(len(jobs))
            time.sleep(FIXED_S + PER_ITEM_S * len(jobs))
            return [{"ok": True} for _ in jobs]

        return batched


VARIANTS = [Variant("plain handler", None)] + [Variant(f"batch_size {b}", b) for b in SIZES]


@dataclass
class Result:
    throughput: float
    p50_ms: float
    p99_ms: float
    completed: int
    submitted: int
    mean_batch: float


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _measure(v: Variant, rate: int, duration: float) -> Result:
    from handler_sdk.models import RunRequest
    from handler_sdk.serve.inprocess import InProcessTransport
    from handler_sdk.serve.state.broker import Broker
    from handler_sdk.worker.loop import Worker, WorkerConfig

    sizes: list[int] = []
    broker = Broker()
    submitted: dict[str, float] = {}
    done: dict[str, float] = {}
    now: Callable[[], float] = time.perf_counter
    broker.on_terminal.append(lambda r: done.setdefault(r.id, now()))
    transport = InProcessTransport(broker, "bench")
    worker = Worker(v.make(sizes), transport, WorkerConfig(drain_timeout_s=1.0, ping_interval_s=60))
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.05)  # the worker attaches to the broker
    req = RunRequest(input={"x": 1})
    n = int(rate * duration)
    t0 = now()
    for i in range(n):
        due = t0 + i / rate
        if (lag := due - now()) > 0:
            await asyncio.sleep(lag)
        r = broker.submit(req, sync=True)
        submitted[r.id] = now()  # open loop: on schedule, however many are still queued
    deadline = now() + GRACE_S + FIXED_S * 2
    while len(done) < n and now() < deadline:
        await asyncio.sleep(0.01)
    worker.stop()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    await transport.close()
    lat = [(done[i] - s) * 1000 for i, s in submitted.items() if i in done]
    span = (max(done.values()) - t0) if done else float("nan")
    return Result(
        throughput=len(lat) / span if lat else 0.0,
        p50_ms=_pct(lat, 0.5),
        p99_ms=_pct(lat, 0.99),
        completed=len(lat),
        submitted=n,
        mean_batch=statistics.fmean(sizes) if sizes else float("nan"),
    )


def _duration(rate: int, quick: bool) -> float:
    if quick:
        return 0.3
    return 3.0 if rate <= 10 else 2.0


def run(run: Run) -> Section:
    sec = Section("batching", "6. Dynamic batching: a 20 ms + 0.2 ms/item handler at concurrency 1")
    repeats = 1 if run.quick else 3
    sec.params = {
        "handler": f"time.sleep({FIXED_S * 1000:g} ms + {PER_ITEM_S * 1000:g} ms x items) in a thread",
        "concurrency": 1,
        "batch_wait_ms": WAIT_MS,
        "rates_jobs_per_s": list(RATES),
        "arrivals_s": {f"{r}/s": _duration(r, run.quick) for r in RATES},
        "repeats": repeats,
        "path": "Broker -> in-process transport -> Worker, no HTTP",
    }
    results: dict[tuple[str, int], list[Result]] = {}
    for rnd in range(repeats):
        order = VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]
        for rate in RATES:
            for v in order:
                res = asyncio.run(_measure(v, rate, _duration(rate, run.quick)))
                results.setdefault((v.label, rate), []).append(res)
                run.log(
                    f"batching: {v.label} at {rate}/s: {res.throughput:.0f} jobs/s, p50 {res.p50_ms:.1f} ms, "
                    f"p99 {res.p99_ms:.1f} ms, {res.completed}/{res.submitted} done, mean batch {res.mean_batch:.1f}"
                )
    for rate in RATES:
        for v in VARIANTS:
            rs = results[(v.label, rate)]
            key = f"{v.label}, {rate} jobs/s"
            sec.figure(f"{key}: throughput", "jobs/s").values = [r.throughput for r in rs]
            sec.figure(f"{key}: p50 latency", "ms").values = [r.p50_ms for r in rs]
            sec.figure(f"{key}: p99 latency", "ms").values = [r.p99_ms for r in rs]
            sec.figure(f"{key}: mean batch", "jobs").values = [r.mean_batch for r in rs]
    hi, lo = max(RATES), min(RATES)
    ratio = sec.figure("ratio bs32 / bs1 throughput", "x")
    t = Target(f"batch_size 32 / batch_size 1 jobs/s at {hi} jobs/s", ratio, 10.0)
    t.ratio.values = [
        a.throughput / b.throughput if b.throughput else float("nan")
        for a, b in zip(results[("batch_size 32", hi)], results[("batch_size 1", hi)], strict=True)
    ]
    sec.targets.append(t)
    t = Target(
        f"batch_size 32 p50 - plain p50 at {lo} jobs/s (ms)",
        sec.figure("p50 added by batching at low load", "ms"),
        WAIT_MS + 2.0,
        "<=",
    )
    t.ratio.values = [
        a.p50_ms - b.p50_ms for a, b in zip(results[("batch_size 32", lo)], results[("plain handler", lo)], strict=True)
    ]
    sec.targets.append(t)
    sec.notes += [
        f"One call of the handler costs {FIXED_S * 1000:g} ms + {PER_ITEM_S * 1000:g} ms per item, so one job at a "
        f"time tops out near {1 / (FIXED_S + PER_ITEM_S):.0f} jobs/s, batches of 8 near "
        f"{8 / (FIXED_S + 8 * PER_ITEM_S):.0f} and batches of 32 near {32 / (FIXED_S + 32 * PER_ITEM_S):,.0f}.",
        "Where the offered rate is above a variant's ceiling its queue grows for the whole run: its throughput is "
        "its ceiling and its latencies (of the jobs that finished) only say that it is overloaded.",
        f"At low load every job of a batched handler waits batch_wait_ms ({WAIT_MS:g} ms) for company that does not "
        "come: that wait is the whole latency cost of batching, and batch_wait_ms=0 removes it (a batch then "
        "takes what is there).",
        "Latency is submit -> result recorded by the broker, in this process (no HTTP: the /runsync benchmark "
        "measures that part).",
    ]
    sec.plot = _plot(run, sec)
    return sec


def _plot(run: Run, sec: Section) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    panels = [("throughput", "jobs/s completed", False), ("p50 latency", "p50 latency (ms)", True),
              ("p99 latency", "p99 latency (ms)", True)]  # fmt: skip
    width = 0.8 / len(VARIANTS)
    for ax, (what, ylabel, log) in zip(axes, panels, strict=True):
        for i, v in enumerate(VARIANTS):
            xs, meds, lo, hi = [], [], [], []
            for g, rate in enumerate(RATES):
                f = sec.figure(f"{v.label}, {rate} jobs/s: {what}", "")
                if not f.values or f.median != f.median:
                    continue
                xs.append(g - 0.4 + width * (i + 0.5))
                meds.append(f.median)
                lo.append(f.median - f.lo)
                hi.append(f.hi - f.median)
            ax.bar(xs, meds, width, label=v.label, yerr=[lo, hi], capsize=3)
            for x, m in zip(xs, meds, strict=True):
                ax.annotate(fmt(m), (x, m), ha="center", va="bottom", fontsize=6, xytext=(0, 2),
                            textcoords="offset points")  # fmt: skip
        if log:
            ax.set_yscale("log")
        ax.set_xticks(range(len(RATES)), [f"{r:,} jobs/s offered" for r in RATES])
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Dynamic batching: 20 ms + 0.2 ms/item handler, concurrency 1, batch_wait_ms {WAIT_MS:g}")
    fig.tight_layout()
    plots = run.out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    fig.savefig(plots / "batching.png", dpi=110)
    plt.close(fig)
    return "plots/batching.png"
