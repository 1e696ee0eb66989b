"""A sync handler (run in a pool thread) that logs a line for its job and fails when asked to."""

import logging

from handler_sdk import handler

log = logging.getLogger("obs_sync_log")


@handler
def sync_log(job):
    log.warning("sync handler running job %s", job.id)
    if job.input.get("fail"):
        raise ValueError(job.input["fail"])
    return {"trace": job.trace}
