"""Start-up checks the test can hold (CK_GATE names a file the async check waits for); the order they ran in is
recorded, and the setup hook runs after them."""

import asyncio
import os

from handler_sdk import handler
from handler_sdk.checks import free_disk

RAN: list[str] = []


async def gate():
    path = os.environ.get("CK_GATE")
    for _ in range(3000):
        if not path or os.path.exists(path):
            break
        await asyncio.sleep(0.01)
    RAN.append("gate")


def sync_check():
    RAN.append("sync")


def setup():
    RAN.append("setup")
    return "ready"


@handler(checks=[gate, sync_check, free_disk(0)], setup=setup)
def order(job):
    return {"ran": list(RAN), "state": job.state}
