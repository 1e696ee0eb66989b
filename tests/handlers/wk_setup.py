"""A setup hook that takes a while (WK_SETUP_S seconds), then fails."""

import os
import time

from handler_sdk import handler


def load():
    time.sleep(float(os.environ.get("WK_SETUP_S", "1")))
    raise RuntimeError("model weights not found")


@handler(setup=load)
def never(job):
    return "unreachable"
