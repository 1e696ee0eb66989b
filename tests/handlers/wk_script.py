"""A worker started from a script, the way runpod's ``runpod.serverless.start`` is used."""

import os

from handler_sdk import handler
from handler_sdk.worker import start


@handler
def echo(job):
    return {"input": job.input, "worker": os.environ.get("HANDLER_SDK_WORKER_ID")}


if __name__ == "__main__":
    start(echo)
