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

from .. import codec
from ..errors import ConfigError, InvalidInput
from ..handler import Handler
from ..job import Job
from ..outputs import Chunk, Final
from .config import env_int
from .engine import Engine
from .inputs import EmbedRequest, GenerateRequest, OpenAIRequest, parse_job_input

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
    if isinstance(request, EmbedRequest):
        yield await _embed(engine, request)
        return
    if request.use_openai_format:
        async for item in _in_openai_format(engine, request):
            yield item
        return
    async for item in engine.generate(request, f"{request_id}-{uuid.uuid4().hex[:8]}"):
        yield item


async def _embed(engine: Engine, request: EmbedRequest) -> Final:
    """``{"embed": [...]}`` answered by vLLM's embeddings serving: one vector per text, and the prompt tokens."""
    body = {"model": engine.config.served_model_name, "input": request.embed}
    async for event in engine.openai.handle("/v1/embeddings", body):
        if isinstance(event, Final):
            answer = event.output
            if answer["status_code"] != 200:
                error = (answer.get("body") or {}).get("error") or {}
                raise InvalidInput(f"embed: {error.get('message', answer)}")
            data = sorted(answer["body"]["data"], key=lambda d: d["index"])
            tokens = answer["body"]["usage"]["prompt_tokens"]
            return Final({"embeddings": [d["embedding"] for d in data], "input_tokens": tokens})
    raise InvalidInput("embed: no answer from the embeddings serving")


async def _in_openai_format(engine: Engine, request: GenerateRequest) -> AsyncIterator[Chunk | Final | str]:
    """worker-vllm's ``use_openai_format``: the job answered as the OpenAI chat (``messages``) or completion
    (``prompt``) route would, by the same serving code; each stream item is one chunk object, and the final
    output the whole response (not streaming) or nothing. An OpenAI error fails the job with its message."""
    body: dict[str, Any] = {**request.sampling_params, "model": request.lora or engine.config.served_model_name}
    body["stream"] = request.stream
    if request.messages is not None:
        route, body["messages"] = "/v1/chat/completions", request.messages
    elif request.apply_chat_template:
        route, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": request.prompt or ""}]
    else:
        route, body["prompt"] = "/v1/completions", request.prompt
    async for event in engine.openai.handle(route, body):
        if isinstance(event, Final):
            answer = event.output
            if answer["status_code"] != 200:
                error = (answer.get("body") or {}).get("error") or {}
                raise InvalidInput(f"{error.get('type', 'error')}: {error.get('message', answer)}")
            if answer["body"] is not None:
                yield Final(answer["body"])
            return
        payload = event.removeprefix("data: ").strip()
        if payload and payload != "[DONE]":
            chunk = codec.loads(payload)
            if isinstance(chunk, dict) and "error" in chunk:
                raise InvalidInput(str(chunk["error"].get("message", chunk["error"])))
            yield Chunk(chunk)


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
