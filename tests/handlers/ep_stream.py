"""Generator handlers for the stream tests."""

import asyncio
import os
import time

from handler_sdk import handler


@handler(concurrency=4)
async def stepper(job):
    # Item i is yielded once the file {dir}/{i} exists, so the test decides when each item appears.
    for i in range(job.input["n"]):
        while not os.path.exists(os.path.join(job.input["dir"], str(i))):
            await asyncio.sleep(0.01)
        yield {"i": i}


@handler(concurrency=4)
def sync_stepper(job):
    for i in range(job.input["n"]):
        while not os.path.exists(os.path.join(job.input["dir"], str(i))) and not job.cancelled:
            time.sleep(0.01)
        if job.cancelled:
            return
        yield {"i": i}


@handler(aggregate_stream=True)
async def fast(job):
    for i in range(job.input["n"]):
        yield i


@handler(aggregate_stream=True)
def yields_error(job):
    yield {"a": 1}
    yield {"error": "bad chunk"}
    yield {"never": True}


@handler
def big_dict(job):
    yield {"blob": "x" * (2 << 20)}
