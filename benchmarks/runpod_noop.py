"""The same no-op handler for runpod-python 1.12, run from its own venv.

``python benchmarks/runpod_noop.py --rp_serve_api --rp_api_port P`` serves runpod's local API; with the
RUNPOD_WEBHOOK_* variables set instead it is a platform worker. The handler is async so runpod runs requests
concurrently (a sync one would block its event loop).
"""

import runpod


async def noop(job):
    return job["input"]


if __name__ == "__main__":
    runpod.serverless.start({"handler": noop})
