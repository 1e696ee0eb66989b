"""Batched handlers for the serve and worker tests: each returns one output per job, naming its batch."""

import os
import threading
import time

from pydantic import BaseModel

from handler_sdk import handler


def _out(job, jobs):
    return {
        "id": job.id,
        "input": job.input,
        "batch": [j.id for j in jobs],
        "worker": os.environ.get("HANDLER_SDK_WORKER_ID", "local"),
    }


@handler(batch_size=8, batch_wait_ms=400)
async def echo(jobs):
    """A batch waits 400 ms to fill: long enough for a test to see its jobs waiting."""
    return [_out(j, jobs) for j in jobs]


@handler(batch_size=4, batch_wait_ms=200)
def mixed(jobs):
    """{"fail": msg} fails its job alone (returned exception), {"err": msg} too (an {"error": ...} item);
    {"raise": msg} fails the whole batch."""
    for j in jobs:
        if "raise" in j.input:
            raise RuntimeError(j.input["raise"])
    outs = []
    for j in jobs:
        if "fail" in j.input:
            outs.append(ValueError(j.input["fail"]))
        elif "err" in j.input:
            outs.append({"error": j.input["err"]})
        else:
            outs.append(_out(j, jobs))
    return outs


@handler(batch_size=3, batch_wait_ms=2000)
def slow(jobs):
    """Reports progress per job, then runs until the longest "seconds" of its jobs has passed or all are
    cancelled; a job's output says whether it saw itself cancelled."""
    for j in jobs:
        j.progress({"batch_of": len(jobs)})
    deadline = time.monotonic() + max(float(j.input.get("seconds", 0)) for j in jobs)
    while time.monotonic() < deadline and not all(j.cancelled for j in jobs):
        time.sleep(0.02)
    return [{**_out(j, jobs), "cancelled": j.cancelled} for j in jobs]


class Item(BaseModel):
    n: int


@handler(batch_size=4, batch_wait_ms=200)
def typed(items: list[Item]):
    return [{"double": i.n * 2, "batch": len(items)} for i in items]


_lock = threading.Lock()
_inside = 0
_peak = 0


@handler(batch_size=3, batch_wait_ms=2000, concurrency_modifier=lambda n: 2)
def pairs(jobs):
    """The modifier sets concurrency 2, which counts batches: two batches of three run at once."""
    global _inside, _peak
    with _lock:
        _inside += 1
        _peak = max(_peak, _inside)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _peak < 2:
        time.sleep(0.01)
    with _lock:
        _inside -= 1
    return [{"batch": [j.id for j in jobs], "peak": _peak} for j in jobs]
