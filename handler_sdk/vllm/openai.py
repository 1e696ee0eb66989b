"""OpenAI-compatible routes answered in-process by vLLM's own serving classes (no vLLM HTTP server).

A request to the endpoint's ``/openai/v1/X`` arrives as a job ``{"openai_route": "/v1/X", "openai_input": body}``
(vLLM's own ``/tokenize``, ``/detokenize``, ``/version`` and ``/health`` arrive without ``/v1``). The job's items
and final output carry the HTTP answer back to the endpoint:

* a non-streamed answer, a GET route, or any error: only ``Final({"status_code": int, "body": json})``; errors
  are vLLM's ``ErrorResponse`` in OpenAI's shape ``{"error": {"message", "type", "code", "param"}}``;
* a streamed answer: each SSE event string exactly as vLLM writes it (``"data: {...}\\n\\n"``, the last one
  ``"data: [DONE]\\n\\n"``) as its own stream item, then ``Final({"status_code": 200, "body": None})``.

``openai_input`` may also be the body's JSON text, parsed by vLLM's request model as vLLM's server parses it.
(Integers beyond 64 bits arrive exact either way, so vLLM answers its own range error for such a seed.)

When the engine dies mid-stream, vLLM's generator writes an error event and ``[DONE]``; we drop both and raise
WorkerDead instead, so the job FAILS (never COMPLETED) and the endpoint ends the stream with its own error event.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from http import HTTPStatus
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal, cast

import vllm
from fastapi._compat.v2 import get_missing_field_error
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, TypeAdapter, ValidationError
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
from vllm.entrypoints.openai.models.protocol import BaseModelPath
from vllm.entrypoints.openai.models.serving import OpenAIServingModels
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from vllm.entrypoints.openai.responses.serving import OpenAIServingResponses
from vllm.entrypoints.serve import create_error_response
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest
from vllm.entrypoints.serve.tokenize.serving import ServingTokenization
from vllm.renderers.online_renderer import OnlineRenderer
from vllm.v1.engine.exceptions import EngineDeadError

from .. import codec
from ..errors import InfrastructureError, WorkerDead
from ..outputs import Final

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

    from .config import ServingOptions

__all__ = ["OPENAI_ROUTES", "OpenAIServing"]

CHAT, COMPLETIONS, MODELS, RESPONSES = "/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/responses"
TOKENIZE, DETOKENIZE, VERSION, HEALTH = "/tokenize", "/detokenize", "/version", "/health"
EMBEDDINGS = "/v1/embeddings"
# Every route this module answers (the endpoint lists the same ones in its 404 for any other /openai path).
OPENAI_ROUTES = (CHAT, COMPLETIONS, MODELS, RESPONSES, EMBEDDINGS, TOKENIZE, DETOKENIZE, VERSION, HEALTH)
_GENERATE = (CHAT, COMPLETIONS, RESPONSES)
_DONE = "data: [DONE]\n\n"


def _answer(status: int, body: Any) -> Final:
    return Final({"status_code": int(status), "body": body})


def _error(err: ErrorResponse) -> Final:
    return _answer(err.error.code, err.model_dump(mode="json"))


def _validation_error(e: ValidationError) -> ErrorResponse:
    """A body that does not fit the request model: 400, naming the first field at fault, as vLLM's server does."""
    errors = e.errors()
    param = ".".join(str(p) for p in errors[0]["loc"]) if errors and errors[0]["loc"] else None
    message = "; ".join(
        (".".join(str(p) for p in err["loc"]) + ": " if err["loc"] else "") + err["msg"] for err in errors
    )
    return create_error_response(message or "invalid request body", param=param)


def normalize_route(route: str) -> str:
    """``v1/models/``, ``/v1/models`` and ``/openai/v1/models`` all name ``/v1/models``."""
    route = "/" + route.strip().strip("/")
    return route.removeprefix("/openai")


@functools.cache
def _adapter(model: Any) -> TypeAdapter[Any]:
    return TypeAdapter(model)


def _parse(model: Any, body: dict[str, Any] | str) -> Any:
    """The request as vLLM's server reads its body (FastAPI): the text decoded by ``json.loads`` (Starlette's
    ``request.json()``), then validated in Python mode. A body that fails is a ``RequestValidationError`` with
    FastAPI's own errors (locations under ``body``), which vLLM's server answers with its 400."""
    value: Any = body
    if isinstance(body, str):
        if not body:
            raise RequestValidationError([get_missing_field_error(("body",))])
        try:
            value = json.loads(body)  # not orjson: FastAPI's decoder and its error positions, as vLLM's server has
        except json.JSONDecodeError as e:
            error = {"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error", "input": {},
                     "ctx": {"error": e.msg}}  # fmt: skip
            raise RequestValidationError([error]) from e
    if value is None:
        raise RequestValidationError([get_missing_field_error(("body",))])
    try:
        return _adapter(model).validate_python(value, from_attributes=True)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in errors]) from e


async def _request_error(e: RequestValidationError) -> Final:
    """vLLM's server's own answer to a body that fails its request model, from vLLM's own exception handler."""
    from vllm.entrypoints.serve.exception_handling.handlers.validation import validation_exception_handler

    # The handler reads only whether to log the stack from the request.
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(args=SimpleNamespace(log_error_stack=False))),
                              state=SimpleNamespace())  # fmt: skip
    response = await validation_exception_handler(request, e)  # type: ignore[arg-type]
    return _answer(response.status_code, codec.loads(bytes(response.body)))


class _Servings:
    """vLLM's serving objects for one engine: generation ones, or embeddings for a pooling model."""

    def __init__(self, llm: AsyncLLM, models: OpenAIServingModels, options: ServingOptions) -> None:
        self.pooling = llm.model_config.runner_type == "pooling"
        self.embedding: Any = None
        if self.pooling:
            from vllm.entrypoints.pooling.embed.serving import ServingEmbedding
            from vllm.renderers.chat_utils import ChatTemplateConfig

            config = ChatTemplateConfig(chat_template=options.chat_template, chat_template_content_format="auto")
            self.embedding = ServingEmbedding(  # type: ignore[no-untyped-call]
                llm, models, request_logger=None, chat_template_config=config
            )
            # vLLM picks FastAPI's ORJSONResponse, deprecated (a warning per answer); the body is read back anyway.
            self.embedding.json_response_cls = JSONResponse
        template: str | None = options.chat_template
        fmt: Literal["auto"] = "auto"
        o = options
        tools: dict[str, Any] = {"enable_auto_tools": o.enable_auto_tools, "tool_parser": o.tool_parser}
        exclude: dict[str, Any] = {"exclude_tools_when_tool_choice_none": o.exclude_tools_when_tool_choice_none}
        trust: dict[str, Any] = {"trust_request_chat_template": o.trust_request_chat_template}
        usage: dict[str, Any] = {"enable_prompt_tokens_details": o.enable_prompt_tokens_details,
                 "enable_force_include_usage": o.enable_force_include_usage,
                 "return_tokens_as_token_ids": o.return_tokens_as_token_ids}  # fmt: skip
        reasoning = o.reasoning_parser or ""
        renderer = OnlineRenderer(
            llm.model_config, llm.renderer, request_logger=None, chat_template=template,
            chat_template_content_format=fmt, reasoning_parser=o.reasoning_parser, **tools, **exclude, **trust,
        )  # fmt: skip
        self.models = models
        self.chat = OpenAIServingChat(
            llm, models, o.response_role, online_renderer=renderer, request_logger=None, chat_template=template,
            chat_template_content_format=fmt, reasoning_parser=reasoning, **tools, **exclude, **trust, **usage,
        )  # fmt: skip
        self.completion = OpenAIServingCompletion(llm, models, online_renderer=renderer, request_logger=None, **usage)
        self.responses = OpenAIServingResponses(
            llm, models, renderer, request_logger=None, chat_template=template, chat_template_content_format=fmt,
            reasoning_parser=reasoning, **tools, **usage,
        )  # fmt: skip
        self.tokenization = ServingTokenization(
            models, renderer, chat_template=template, chat_template_content_format=fmt, **trust
        )


class OpenAIServing:
    """vLLM's OpenAI serving objects for one engine, created on first use.

    They must be created inside the running event loop (they capture it), hence lazily rather than at engine
    start, which runs in a thread. ``death`` returns the engine's death as an error, or None while it runs.
    """

    def __init__(
        self,
        llm: AsyncLLM,
        served_model_name: str,
        model_path: str,
        options: ServingOptions,
        death: Callable[[], WorkerDead | None],
    ) -> None:
        self._llm: AsyncLLM | None = llm
        self._served = served_model_name
        self._model_path = model_path
        self._options = options
        self._death = death
        self._servings: _Servings | None = None
        self._lock = asyncio.Lock()

    async def servings(self) -> _Servings:
        """The serving objects, built (and the LORA_MODULES adapters loaded) on the first call."""
        async with self._lock:
            if self._servings is None:
                llm = self._llm
                if llm is None:
                    raise InfrastructureError("the vLLM engine is shut down")
                base = [BaseModelPath(name=self._served, model_path=self._model_path)]
                models = OpenAIServingModels(llm, base, lora_modules=list(self._options.lora_modules) or None)
                await models.init_static_loras()  # type: ignore[no-untyped-call]
                self._servings = _Servings(llm, models, self._options)
            return self._servings

    def close(self) -> None:
        """Drop every reference to the engine (the engine is shutting down)."""
        self._llm = self._servings = None

    async def handle(self, route: str, body: dict[str, Any] | str | None) -> AsyncIterator[str | Final]:
        """Answer one OpenAI request: SSE strings for a stream, then always one ``Final`` with the status."""
        answer = await self._dispatch(normalize_route(route), body)
        if isinstance(answer, Final):
            yield answer
            return
        try:
            async for event in answer:
                if (event == _DONE or event.startswith('data: {"error"')) and (dead := self._death()) is not None:
                    raise dead
                yield event
        finally:
            # Closing vLLM's generator is what aborts the request when the job is cancelled mid-stream.
            await answer.aclose()
        if (dead := self._death()) is not None:
            raise dead
        yield _answer(HTTPStatus.OK, None)

    async def _dispatch(self, route: str, body: dict[str, Any] | str | None) -> Final | AsyncGenerator[str, None]:
        """The whole answer as a Final, or an SSE generator for a stream."""
        if route in (VERSION, HEALTH, MODELS):
            return await self._get(route)
        if route not in (*_GENERATE, EMBEDDINGS, TOKENIZE, DETOKENIZE):
            return _error(
                create_error_response(
                    f"unknown OpenAI route {route!r}; served: {', '.join(OPENAI_ROUTES)}",
                    err_type="NotFoundError",
                    status_code=HTTPStatus.NOT_FOUND,
                )
            )
        if body is None:
            return _error(create_error_response(f"{route} needs a JSON request body"))
        s = await self.servings()
        if (refused := _wrong_runner(route, s.pooling)) is not None:
            return refused
        try:
            result = await self._call(s, route, body)
        except RequestValidationError as e:
            return await _request_error(e)
        except ValidationError as e:
            return _error(_validation_error(e))
        except EngineDeadError as e:
            raise self._death() or WorkerDead(f"the vLLM engine died: {e}") from e
        except Exception as e:  # vLLM raises some request errors (VLLMValidationError) rather than returning them
            if (dead := self._death()) is not None:
                raise dead from e
            return _error(create_error_response(e))
        return _to_answer(route, result)

    async def _get(self, route: str) -> Final:
        if route == VERSION:
            return _answer(HTTPStatus.OK, {"version": vllm.__version__})
        if route == HEALTH:
            # vLLM's own /health: 200 with an empty body while the engine runs, 503 once it is dead.
            return _answer(HTTPStatus.SERVICE_UNAVAILABLE if self._death() is not None else HTTPStatus.OK, None)
        listing = await (await self.servings()).models.show_available_models()
        return _answer(HTTPStatus.OK, listing.model_dump(mode="json"))

    async def _call(self, s: _Servings, route: str, body: dict[str, Any] | str) -> Any:
        if route == CHAT:
            return await s.chat.create_chat_completion(_parse(ChatCompletionRequest, body))
        if route == COMPLETIONS:
            return await s.completion.create_completion(_parse(CompletionRequest, body))
        if route == RESPONSES:
            return await s.responses.create_responses(_parse(ResponsesRequest, body))
        if route == EMBEDDINGS:
            return _pooled(await s.embedding(_parse(_embedding_request(), body), None))
        if route == TOKENIZE:
            # vLLM's /tokenize takes either a completion-style body (prompt) or a chat-style one (messages).
            return await s.tokenization.create_tokenize(_parse(TokenizeRequest, body), None)  # type: ignore[arg-type]
        return await s.tokenization.create_detokenize(_parse(DetokenizeRequest, body), None)  # type: ignore[arg-type]


def _to_answer(route: str, result: Any) -> Final | AsyncGenerator[str, None]:
    """What a serving method returned, as a Final (error or whole answer) or an SSE generator (a stream)."""
    if isinstance(result, ErrorResponse):
        return _error(result)
    if isinstance(result, Final):
        return result
    if isinstance(result, BaseModel):
        return _answer(HTTPStatus.OK, result.model_dump(mode="json", by_alias=True))
    if route == RESPONSES:
        return _responses_sse(result)
    return cast("AsyncGenerator[str, None]", result)


def _wrong_runner(route: str, pooling: bool) -> Final | None:
    """Embeddings need a pooling model, generation a generating one: a 400 saying which this worker serves."""
    if route not in (*_GENERATE, EMBEDDINGS) or (route == EMBEDDINGS) == pooling:
        return None
    what = "a pooling model (RUNNER=pooling)" if route == EMBEDDINGS else "a generating model"
    serves = "a pooling" if pooling else "a generating"
    return _error(create_error_response(f"{route} needs {what}; this worker serves {serves} model"))


def _embedding_request() -> Any:
    from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest

    return EmbeddingRequest


def _pooled(response: Any) -> Final | ErrorResponse:
    """vLLM's pooling serving answers with an HTTP response object: its status and JSON body."""
    if isinstance(response, ErrorResponse):
        return response
    return _answer(response.status_code, codec.loads(bytes(response.body)))


async def _responses_sse(events: AsyncGenerator[Any, None]) -> AsyncGenerator[str, None]:
    """The Responses API streams typed events: written as vLLM's server writes them (``event:`` then ``data:``)."""
    try:
        async for event in events:
            kind = getattr(event, "type", "unknown")
            yield f"event: {kind}\ndata: {event.model_dump_json(indent=None, by_alias=True)}\n\n"
    finally:
        await events.aclose()
