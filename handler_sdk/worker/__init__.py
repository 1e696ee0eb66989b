"""The worker runtime: ``python -m handler_sdk.worker`` in a container, or in-process inside serve."""

from .loop import Worker, WorkerConfig, WorkerState

__all__ = ["Worker", "WorkerConfig", "WorkerState", "start"]


def start(target: object = None) -> None:
    """Run the worker for a handler from a script (like ``runpod.serverless.start``): configured from env vars."""
    from .__main__ import run_worker

    raise SystemExit(run_worker(target))
