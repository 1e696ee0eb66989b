"""handler_sdk: one decorated function serves as a serverless GPU worker, a local job endpoint and an
OpenAI-compatible LLM server.

>>> from handler_sdk import handler
>>> @handler
... async def generate(job):
...     return {"echo": job.input}
"""

from __future__ import annotations

from .errors import (
    ConfigError,
    FileError,
    HandlerError,
    HandlerSDKError,
    InfrastructureError,
    InvalidInput,
    JobFailure,
    SetupError,
    TransportError,
    UserError,
)
from .handler import Handler, HandlerKind, handler
from .job import Job
from .models import JobStatus
from .outputs import Chunk, File, Final

__version__ = "0.1.0"

__all__ = [
    "Chunk",
    "ConfigError",
    "File",
    "FileError",
    "Final",
    "Handler",
    "HandlerError",
    "HandlerKind",
    "HandlerSDKError",
    "InfrastructureError",
    "InvalidInput",
    "Job",
    "JobFailure",
    "JobStatus",
    "SetupError",
    "TransportError",
    "UserError",
    "__version__",
    "handler",
]
