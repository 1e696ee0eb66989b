"""A sync handler that blocks its thread and ignores job.cancelled, as careless user code does."""

import os
import time
from pathlib import Path

from handler_sdk import handler


@handler(concurrency=2)
def block(job):
    inp = job.input
    release = inp.get("wait_for")
    # Bounded so a test that fails half-way cannot leave a thread spinning for the rest of the session.
    deadline = time.monotonic() + inp.get("max_s", 30)
    while release and not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    if "done_file" in inp:
        Path(inp["done_file"]).write_text(job.id)
    return {"tag": inp.get("tag")}
