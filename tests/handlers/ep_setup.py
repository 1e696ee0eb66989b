"""A setup hook the test can hold (EP_SETUP_GATE names a file it waits for) and that counts its runs."""

import os
import time

from handler_sdk import handler

SETUPS: list[int] = []


def load():
    gate = os.environ.get("EP_SETUP_GATE")
    deadline = time.monotonic() + 30
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    SETUPS.append(1)
    return {"loaded": len(SETUPS)}


@handler(setup=load)
def run(job):
    out = {"setup_runs": len(SETUPS), "state": job.state}
    if job.input.get("refresh"):
        out["refresh_worker"] = True
    return out
