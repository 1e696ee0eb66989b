"""A long sync handler that stops early when its job is cancelled or times out.

A thread cannot be killed: the endpoint marks the job CANCELLED at once and frees the slot, and the handler should
notice `job.cancelled` to give its thread back.

    python -m handler_sdk.serve examples/sync_cancellable.py --test-input '{"input": {"seconds": 0.2}}'
"""

from handler_sdk import handler


@handler(concurrency=2, timeout=600)
def long_job(job):
    seconds = float(job.input.get("seconds", 30))
    ticks = 0
    while ticks * 0.05 < seconds:
        if job.wait_cancelled(0.05):  # an interruptible sleep
            return {"stopped_early": True, "ticks": ticks}
        ticks += 1
    return {"stopped_early": False, "ticks": ticks}
