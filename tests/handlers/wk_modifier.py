"""A concurrency modifier that reads the limit from a file (WK_CONCURRENCY_FILE), so a test can change it."""

import asyncio
import os
from pathlib import Path

from handler_sdk import handler


def from_file(current):
    text = Path(os.environ["WK_CONCURRENCY_FILE"]).read_text().strip()
    if text == "none":
        return None
    return int(text)


@handler(concurrency=1, concurrency_modifier=from_file)
async def gated(job):
    gate = Path(job.input["gate"])
    while not gate.exists():
        await asyncio.sleep(0.02)
    return job.input["i"]
