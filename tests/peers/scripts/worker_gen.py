"""A runpod worker with a generator handler; run by the peer interpreter.

PEER_AGGREGATE=1 sets ``return_aggregate_stream``. Input: {"n": int, "gap": seconds, "raise_at": int | None}.
"""

import os
import time

import runpod


def handler(job):
    inp = job["input"]
    for i in range(inp.get("n", 3)):
        if inp.get("raise_at") == i:
            raise RuntimeError(f"generator broke at {i}")
        time.sleep(inp.get("gap", 0))
        yield {"i": i}


runpod.serverless.start({"handler": handler, "return_aggregate_stream": os.environ.get("PEER_AGGREGATE") == "1"})
