"""Progress updates show in /status `output` while the job runs.

python -m handler_sdk.serve examples/progress.py --test-input '{"input": {"steps": 3}}'
"""

import time

from handler_sdk import handler


@handler
def train(job):
    steps = int(job.input.get("steps", 5))
    for step in range(steps):
        time.sleep(0.05)  # sync code runs in a thread, so sleeping never blocks the endpoint
        job.progress({"step": step + 1, "of": steps})
    return {"trained_steps": steps}
