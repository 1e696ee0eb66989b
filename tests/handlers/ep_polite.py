"""A long sync handler that checks job.cancelled and says (in a file) when it noticed."""

import time
from pathlib import Path

from handler_sdk import handler


@handler
def polite(job):
    deadline = time.monotonic() + 60
    while not job.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    Path(job.input["noticed"]).write_text("cancelled" if job.cancelled else "timed out")
    return {"finished": True}
