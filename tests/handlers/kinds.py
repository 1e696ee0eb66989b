"""One handler of each kind, selected with module:function."""

import time

from handler_sdk import handler


@handler(concurrency=4)
def sync_echo(job):
    return {"kind": "sync", "input": job["input"]}


@handler(concurrency=4)
async def async_echo(job):
    return {"kind": "async", "input": job.input}


@handler(concurrency=4)
def sync_gen(job):
    for i in range(job.input.get("n", 3)):
        yield {"i": i}


@handler(concurrency=4, aggregate_stream=True)
async def async_gen(job):
    for i in range(job.input.get("n", 3)):
        yield {"i": i}


@handler(concurrency=2)
def sync_sleep(job):
    # Blocks its thread; must not stall the loop (health, take, cancel, other jobs).
    deadline = time.monotonic() + job.input.get("seconds", 2)
    while time.monotonic() < deadline and not job.cancelled:
        time.sleep(0.01)
    return {"slept": True, "cancelled": job.cancelled}
