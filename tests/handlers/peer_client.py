"""Targets for the runpod SDK client compatibility tests (tests/peers/test_runpod_client.py)."""

import asyncio

from handler_sdk import handler


@handler(concurrency=2)
async def echo(job):
    await asyncio.sleep(job.input.get("sleep", 0))
    if job.input.get("fail"):
        raise ValueError(f"asked to fail: {job.input['fail']}")
    return {"echo": job.input, "id": job.id}


@handler(aggregate_stream=True)
async def slow_stream(job):
    # Gaps between yields so the client's 1 s polls see the items arrive over several replies.
    for i in range(job.input.get("n", 3)):
        await asyncio.sleep(job.input.get("gap", 0.3))
        yield {"i": i}


@handler
async def sleepy(job):
    # One slot: a running sleepy job keeps the rest of the queue IN_QUEUE (for cancel and purge-queue).
    await asyncio.sleep(job.input.get("seconds", 3600))
    return {"slept": True}
