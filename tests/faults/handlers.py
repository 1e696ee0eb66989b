"""Handlers for the fault scenarios: streams that can be killed mid-way, jobs that kill their worker, echo."""

import asyncio
import os

from handler_sdk import handler


@handler(concurrency=4)
async def stream(job):
    # Slow enough to be killed mid-stream; "gate" (a file) holds the stream at item "hold" until it exists.
    n, delay = job.input.get("n", 50), job.input.get("delay", 0.02)
    hold, gate = job.input.get("hold"), job.input.get("gate")
    for i in range(n):
        if i == hold and gate:
            while not os.path.exists(gate):
                await asyncio.sleep(0.01)
        yield {"i": i}
        await asyncio.sleep(delay)


@handler
async def poison(job):
    if job.input.get("die"):
        os._exit(1)
    return {"ok": True}


@handler(concurrency=8)
async def echo(job):
    if job.input.get("progress_depth") is not None:
        update: object = []
        for _ in range(job.input["progress_depth"]):
            update = [update]
        job.progress(update)
        await asyncio.sleep(0.3)
    await asyncio.sleep(job.input.get("sleep", 0))
    return job.input


@handler(concurrency=4)
async def record(job):
    # Each run appends the job id to a file: a job that ran twice is there twice.
    with open(job.input["log"], "a") as f:
        f.write(job.id + "\n")
    await asyncio.sleep(job.input.get("sleep", 0.005))
    return {"n": job.input.get("n")}


@handler(concurrency=2)
def hang(job):
    # A sync handler that ignores cancellation: only the endpoint's clock can end its job.
    import time

    time.sleep(job.input.get("seconds", 3600))
    return {"woke": True}
