"""Concurrency-1 jobs the test steers through files: wait for a file, fail unless a file exists, report progress."""

import asyncio
import os

from handler_sdk import handler


@handler
async def gate(job):
    inp = job.input
    if "progress" in inp:
        job.progress(inp["progress"])
    release = inp.get("wait_for")
    try:
        while release and not os.path.exists(release):
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        if "on_cancel" in inp:
            open(inp["on_cancel"], "w").close()  # proof that the task itself was cancelled
        raise
    if "fail_unless" in inp and not os.path.exists(inp["fail_unless"]):
        raise ValueError(f"{os.path.basename(inp['fail_unless'])} is missing")
    return {"tag": inp.get("tag")}
