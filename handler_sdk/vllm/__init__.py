"""The vLLM adapter: a ready-made LLM handler, and the engine pieces to build your own.

Serve a model with no code (``MODEL_NAME`` unset serves a tiny gibberish-writing test model)::

    MODEL_NAME=Qwen/Qwen3-0.6B python -m handler_sdk.serve handler_sdk.vllm

Or build on the adapter::

    from handler_sdk import handler
    from handler_sdk.vllm import Engine, GenerateRequest

    @handler(concurrency=8, setup=Engine.start)
    async def summarize(job):
        request = GenerateRequest(prompt="Summarize: " + job.input["text"], stream=True)
        async for item in job.state.generate(request, job.id):
            yield item
"""

from __future__ import annotations

from .builtin import handler, respond
from .config import BatchPolicy, EngineConfig
from .engine import Engine
from .inputs import GenerateRequest, OpenAIRequest, parse_job_input, sampling_params
from .metrics import ENGINE_METRIC_FIELDS, EngineStats
from .tiny import build_tiny_model, ensure_tiny_model

__all__ = [
    "ENGINE_METRIC_FIELDS",
    "BatchPolicy",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "GenerateRequest",
    "OpenAIRequest",
    "build_tiny_model",
    "ensure_tiny_model",
    "handler",
    "parse_job_input",
    "respond",
    "sampling_params",
]
