"""The ready-made LLM handler: ``python -m handler_sdk.serve handler_sdk.vllm`` serves a model with no user code.

Concurrency is fixed at ``MAX_CONCURRENCY`` (default 30) jobs per worker, read when this module is imported.
vLLM batches whatever is running, so the limit only caps how many requests wait inside the engine rather than
in the job queue; set it near the engine's ``MAX_NUM_SEQS`` to keep the queue where the platform can see it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ..errors import ConfigError
from ..handler import Handler
from ..job import Job
from ..outputs import Chunk, Final
from .config import env_int
from .engine import Engine
from .inputs import OpenAIRequest, parse_job_input

__all__ = ["handler", "respond"]


async def respond(engine: Engine, job_input: Any, request_id: str) -> AsyncIterator[Chunk | Final | str]:
    """Answer one job input on ``engine``: a generation request or a relayed OpenAI request.

    Yields what a generator handler yields (see ``stream.generate`` and ``openai``). ``request_id`` names the
    vLLM request in its logs; a suffix keeps it unique when a job is retried.
    """
    request = parse_job_input(job_input)
    if isinstance(request, OpenAIRequest):
        async for event in engine.openai.handle(request.route, request.body):
            yield event
        return
    async for item in engine.generate(request, f"{request_id}-{uuid.uuid4().hex[:8]}"):
        yield item


async def _start() -> Engine:
    return await Engine.start()


async def _generate(job: Job) -> AsyncIterator[Chunk | Final | str]:
    if not isinstance(job.state, Engine):
        raise ConfigError("the vLLM handler runs after its setup hook: job.state should be the Engine")
    async for item in respond(job.state, job.input, job.id):
        yield item


handler = Handler(_generate, concurrency=env_int(os.environ, "MAX_CONCURRENCY", 30), setup=_start)
"""The ready-made handler: an async generator, concurrency ``MAX_CONCURRENCY``, and a setup hook that starts
the engine from the environment."""
