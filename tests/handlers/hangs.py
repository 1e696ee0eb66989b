import asyncio

from handler_sdk import handler


@handler(concurrency=2)
async def hang(job):
    await asyncio.sleep(3600)
