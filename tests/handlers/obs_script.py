"""Does what its input says, for the observability tests: stream, sleep, fail, log; its output names its trace."""

import asyncio
import logging

from handler_sdk import Chunk, Final, handler

log = logging.getLogger("obs_script")


@handler(concurrency=4)
async def script(job):
    if job.input.get("log"):
        log.warning("handler running job %s", job.id)
    for i in range(job.input.get("stream", 0)):
        yield Chunk({"token": f"t{i}"}, metrics={"tokens": i + 1, "kv_cache_usage": 0.25})
        await asyncio.sleep(job.input.get("gap", 0))
    await asyncio.sleep(job.input.get("sleep", 0))
    if job.input.get("fail"):
        raise ValueError(job.input["fail"])
    yield Final({"trace": job.trace, "echo": job.input})
