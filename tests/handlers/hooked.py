"""A generator that reports progress before each item, for the webhook event tests."""

import asyncio
import os

from handler_sdk import handler


@handler(concurrency=4)
async def events(job):
    for i in range(job.input.get("n", 3)):
        job.progress({"step": i})
        if pause := job.input.get("pause"):
            await asyncio.sleep(pause)  # lets the worker's progress loop send the update
        yield {"i": i}
    if "fail_unless" in job.input and not os.path.exists(job.input["fail_unless"]):
        raise ValueError("not yet")
