"""Jobs that wait to be cancelled and leave a marker file (input.marker) when the cancel reaches them."""

import asyncio
from pathlib import Path

from handler_sdk import handler


@handler
async def async_wait(job):
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        Path(job.input["marker"]).write_text("cancelled")
        raise
    return "never cancelled"


@handler
def sync_wait(job):
    if job.wait_cancelled(60):
        Path(job.input["marker"]).write_text("cancelled")
    return "never cancelled"
