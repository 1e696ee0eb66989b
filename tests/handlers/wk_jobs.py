"""Handlers for the worker-runtime tests. Each result names the worker process that produced it."""

import asyncio
import os
import time
from pathlib import Path

from handler_sdk import handler


def _who():
    return {"worker": os.environ.get("HANDLER_SDK_WORKER_ID"), "pid": os.getpid()}


@handler(concurrency=4)
async def batch_echo(job):
    await asyncio.sleep(job.input.get("seconds", 0))
    return {"input": job.input, **_who()}


@handler
def single_echo(job):
    return {"input": job["input"], **_who()}


@handler
def stream_fast(job):
    yield from range(job.input["n"])


@handler(concurrency=2)
async def hang_on(job):
    # Hangs (or sleeps input.seconds) only on the worker that input.hang_on names; answers at once elsewhere.
    if job.input.get("hang_on") == os.environ.get("HANDLER_SDK_WORKER_ID"):
        await asyncio.sleep(job.input.get("seconds", 3600))
    return _who()


@handler
async def sleeps(job):
    await asyncio.sleep(job.input["seconds"])
    return {"slept": job.input["seconds"], **_who()}


@handler
def blocks(job):
    # Keeps its thread busy, and holds the GIL most of the time, for the whole job.
    deadline = time.monotonic() + job.input["seconds"]
    spins = 0
    while time.monotonic() < deadline:
        spins += 1
    return {"spins": spins > 0}


@handler
def fails(job):
    raise ValueError("no good")


@handler
def stream_big(job):
    # Items of input.size bytes, yielded as fast as the worker takes them.
    for i in range(job.input["n"]):
        yield f"{i:04d}" + "x" * (job.input["size"] - 4)


@handler
async def stream_gated(job):
    # One item, then nothing until the gate file exists: the item must not wait in a buffer meanwhile.
    yield "before the gate"
    gate = Path(job.input["gate"])
    while not gate.exists():
        await asyncio.sleep(0.02)
    yield "after the gate"


@handler(concurrency=8)
async def stream_many(job):
    # Several jobs at once, each yielding an item a millisecond: their items interleave at the worker.
    for i in range(job.input["n"]):
        yield i
        await asyncio.sleep(0.001)
