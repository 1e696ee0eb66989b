"""Each run returns a fresh nonce, so two replies with the same nonce came from one job."""

import asyncio
import uuid

from handler_sdk import handler


@handler(concurrency=4)
async def nonce(job):
    await asyncio.sleep(job.input.get("sleep", 0))
    return {"nonce": uuid.uuid4().hex}
