"""Start-up checks: refuse to take jobs on a machine that cannot run them, with a message that says why.

    python -m handler_sdk.serve examples/checks.py --test-input '{"input": {}}'
    MODEL_PATH=/nowhere python -m handler_sdk.serve examples/checks.py   # exits 1: "... /nowhere does not exist ..."

They run once, before the setup hook and the first job, while /health counts the worker as initializing.
"""

import os

from handler_sdk import handler
from handler_sdk.checks import free_disk, gpu_memory, model_file

MODEL_PATH = os.environ.get("MODEL_PATH", __file__)  # this file stands in for the weights of a real model


def tokenizer_loads():
    # Any function is a check: raise (or return False) to stop the worker before it takes a job.
    if not os.access(MODEL_PATH, os.R_OK):
        raise PermissionError(f"cannot read {MODEL_PATH}")


@handler(
    checks=[
        free_disk(min_gb=0.1),
        model_file(MODEL_PATH),
        gpu_memory(min_gb=1, required=False),  # measured when torch sees CUDA; skipped (logged) otherwise
        tokenizer_loads,
    ]
)
def generate(job):
    return {"model": os.path.basename(MODEL_PATH), "input": job.input}
