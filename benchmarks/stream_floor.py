"""The floor under benchmark 9, in one process with no HTTP: ``python -m benchmarks.stream_floor STREAMS SECONDS MODE``.

Runs benchmark 9's handler (engine clock, vLLM-shaped items unless ``SHAPE=text``) at 20,000 items/s in all, and
prints the process's CPU per item. MODE is ``raw`` (the handler's own loop, iterated bare), ``noop`` (through the
runner, to an emit that drops each item) or ``mux`` (through the runner to the worker's multiplexer, whose
requests a stub answers after 1 ms). The differences are what the runner and the multiplexer cost per item; run
each a few times and take the least, as a shared machine only ever adds to it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from handler_sdk import loop as event_loop
from handler_sdk.collector import tune_collector
from handler_sdk.job import Job
from handler_sdk.loader import load_handler
from handler_sdk.runner import run_job
from handler_sdk.threads import ElasticPool
from handler_sdk.worker.mux import Mux, Stream

from .stream_cpu import HANDLER, _plan


async def _floor(streams: int, seconds: float, mode: str) -> float:
    h = load_handler(str(HANDLER))
    pool = ElasticPool()
    lead = 0.3
    body = {**_plan(streams, seconds), "start_at": time.time() + lead, "shape": os.environ.get("SHAPE", "vllm")}
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

    tune_collector()
    cpu = time.process_time()
    await asyncio.gather(*(one(i) for i in range(streams)))
    return (time.process_time() - cpu) / (streams * int(body["n"])) * 1e6


def main() -> None:
    streams, seconds, mode = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    us = event_loop.run(_floor(streams, seconds, mode))
    print(f"{mode} {streams} streams: {us:.2f} µs/item (load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
