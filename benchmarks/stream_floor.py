"""The floors under benchmark 9, in one process with no HTTP:
``python -m benchmarks.stream_floor STREAMS SECONDS MODE [--shape vllm|text] [--clock engine|timers] [--json]``.

Runs benchmark 9's handler (engine clock and vLLM-shaped items unless told otherwise) at 20,000 items/s in all,
and prints the process's CPU per item over the steady part of the run (the same window, and the same count of
items in it, as benchmark 9 takes of the worker). MODE is ``raw`` (the handler's own loop, iterated bare: what
benchmark 9 subtracts from the worker's CPU to leave the SDK's), ``noop`` (through the runner, to an emit that
drops each item) or ``mux`` (through the runner to the worker's multiplexer, whose requests a stub answers after
1 ms). The differences are what the runner and the multiplexer cost per item; run each a few times and take the
least, as a shared machine only ever adds to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

from handler_sdk import loop as event_loop
from handler_sdk.collector import tune_collector
from handler_sdk.job import Job
from handler_sdk.loader import load_handler
from handler_sdk.runner import run_job
from handler_sdk.threads import ElasticPool
from handler_sdk.worker.mux import Mux, Stream

from .stream_cpu import HANDLER, RATE, margin, plan

__all__ = ["floor"]


async def _floor(streams: int, seconds: float, mode: str, shape: str, clock: str) -> dict[str, float]:
    h = load_handler(str(HANDLER))
    pool = ElasticPool()
    start_at = time.time() + 0.3
    body: dict[str, Any] = {**plan(streams, seconds), "start_at": start_at, "shape": shape, "clock": clock}
    taken: list[list[Stream]] = [[]]

    async def post(_: bytes) -> tuple[list[str], list[int]]:
        await asyncio.sleep(0.001)
        return [s.job_id for s in taken[0]], [200] * len(taken[0])

    mux = Mux(post, post_one=None, max_bytes=1 << 20, interval_s=0.02)  # type: ignore[arg-type]
    take = mux._take

    def record() -> Any:
        parts, b = take()
        taken[0] = parts
        return parts, b

    mux._take = record  # type: ignore[method-assign]

    async def one(i: int) -> None:
        job = Job({"id": f"j{i}", "input": body}, input=body)
        if mode == "raw":
            async for _ in h.fn(job):
                pass
            return
        s = mux.open(job.id)
        await run_job(h, job, emit=(lambda item: None) if mode == "noop" else s.emit, pool=pool)
        await s.flush()

    window: list[float] = []

    async def watch() -> None:
        # Benchmark 9's steady window: a little after the first step, a little before the last.
        m = margin(seconds)
        for at in (start_at + m, start_at + seconds - m):
            await asyncio.sleep(max(0.0, at - time.time()))
            window.extend((time.process_time(), time.monotonic()))

    tune_collector()
    watcher = asyncio.ensure_future(watch())
    await asyncio.gather(*(one(i) for i in range(streams)))
    end = time.time()
    await watcher
    cpu, wall = window[2] - window[0], window[3] - window[1]
    total = streams * int(body["n"])
    achieved = total / max(end - start_at, 1e-9)
    # As benchmark 9 counts the worker's items in the window: at the rate achieved (the streams can finish late).
    return {"us": cpu / (min(RATE, achieved) * wall) * 1e6, "achieved": achieved, "share": cpu / wall}


def floor(streams: int, seconds: float, mode: str, shape: str = "vllm", clock: str = "engine") -> dict[str, float]:
    """µs of this process's CPU per item (``us``), items/s achieved, and the share of a core, for one run."""
    return event_loop.run(_floor(streams, seconds, mode, shape, clock))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stream_floor", description=__doc__)
    p.add_argument("streams", type=int)
    p.add_argument("seconds", type=float)
    p.add_argument("mode", choices=["raw", "noop", "mux"])
    p.add_argument("--shape", choices=["vllm", "text"], default=os.environ.get("SHAPE", "vllm"))
    p.add_argument("--clock", choices=["engine", "timers"], default="engine")
    p.add_argument("--json", action="store_true", help="one JSON line (what benchmark 9 reads)")
    a = p.parse_args()
    r = floor(a.streams, a.seconds, a.mode, a.shape, a.clock)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"{a.mode} {a.streams} streams: {r['us']:.2f} µs/item (load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
