"""A start-up check that fails: the setup hook and every job must never run."""

from handler_sdk import handler
from handler_sdk.checks import model_file

SETUP_RAN: list[int] = []


@handler(checks=[model_file("/nonexistent/weights.safetensors")], setup=lambda: SETUP_RAN.append(1))
def never(job):
    return "unreachable"
