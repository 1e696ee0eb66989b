"""OpenAI-compatible routes answered in-process by vLLM's own serving classes (no vLLM HTTP server).

A request to the endpoint's ``/openai/v1/X`` arrives as a job ``{"openai_route": "/v1/X", "openai_input": body}``.
The job's items and final output carry the HTTP answer back to the endpoint:

* a non-streamed answer, ``/v1/models``, or any error: only ``Final({"status_code": int, "body": json})``; errors
  are vLLM's ``ErrorResponse`` in OpenAI's shape ``{"error": {"message", "type", "code", "param"}}``;
* a streamed answer: each SSE event string exactly as vLLM writes it (``"data: {...}\\n\\n"``, the last one
  ``"data: [DONE]\\n\\n"``) as its own stream item, then ``Final({"status_code": 200, "body": None})``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ValidationError
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
from vllm.entrypoints.openai.models.protocol import BaseModelPath
from vllm.entrypoints.openai.models.serving import OpenAIServingModels
from vllm.entrypoints.serve import create_error_response
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.renderers.online_renderer import OnlineRenderer
from vllm.v1.engine.exceptions import EngineDeadError

from ..errors import InfrastructureError
from ..outputs import Final

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

__all__ = ["OPENAI_ROUTES", "OpenAIServing"]

CHAT, COMPLETIONS, MODELS = "/v1/chat/completions", "/v1/completions", "/v1/models"
OPENAI_ROUTES = (CHAT, COMPLETIONS, MODELS)


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


class OpenAIServing:
    """vLLM's chat, completion and models serving objects for one engine, created on first use.

    They must be created inside the running event loop (they capture it), hence lazily rather than at engine
    start, which runs in a thread.
    """

    def __init__(self, llm: AsyncLLM, served_model_name: str, model_path: str) -> None:
        self._llm: AsyncLLM | None = llm
        self._served = served_model_name
        self._model_path = model_path
        self._models: OpenAIServingModels | None = None
        self._chat: OpenAIServingChat | None = None
        self._completion: OpenAIServingCompletion | None = None

    def _ensure(self) -> tuple[OpenAIServingModels, OpenAIServingChat, OpenAIServingCompletion]:
        # No await in here, so two first jobs arriving together cannot both build.
        if self._models is None or self._chat is None or self._completion is None:
            llm = self._llm
            if llm is None:
                raise InfrastructureError("the vLLM engine is shut down")
            models = OpenAIServingModels(llm, [BaseModelPath(name=self._served, model_path=self._model_path)])
            renderer = OnlineRenderer(
                llm.model_config,
                llm.renderer,
                request_logger=None,
                chat_template=None,
                chat_template_content_format="auto",
            )
            self._chat = OpenAIServingChat(
                llm,
                models,
                "assistant",
                online_renderer=renderer,
                request_logger=None,
                chat_template=None,
                chat_template_content_format="auto",
            )
            self._completion = OpenAIServingCompletion(llm, models, online_renderer=renderer, request_logger=None)
            self._models = models
        return self._models, self._chat, self._completion

    def close(self) -> None:
        """Drop every reference to the engine (the engine is shutting down)."""
        self._llm = self._models = self._chat = self._completion = None

    async def handle(self, route: str, body: dict[str, Any] | None) -> AsyncIterator[str | Final]:
        """Answer one OpenAI request: SSE strings for a stream, then always one ``Final`` with the status."""
        answer = await self._dispatch(normalize_route(route), body)
        if isinstance(answer, Final):
            yield answer
            return
        try:
            async for event in answer:
                yield event
        finally:
            # Closing vLLM's generator is what aborts the request when the job is cancelled mid-stream.
            await answer.aclose()
        yield _answer(HTTPStatus.OK, None)

    async def _dispatch(self, route: str, body: dict[str, Any] | None) -> Final | AsyncGenerator[str, None]:
        """The whole answer as a Final, or vLLM's SSE generator for a stream."""
        models, chat, completion = self._ensure()
        if route == MODELS:
            listing = await models.show_available_models()
            return _answer(HTTPStatus.OK, listing.model_dump(mode="json"))
        if route not in (CHAT, COMPLETIONS):
            return _error(
                create_error_response(
                    f"unknown OpenAI route {route!r}; served: {', '.join(OPENAI_ROUTES)}",
                    err_type="NotFoundError",
                    status_code=HTTPStatus.NOT_FOUND,
                )
            )
        if body is None:
            return _error(create_error_response(f"{route} needs a JSON request body"))
        try:
            if route == CHAT:
                result: Any = await chat.create_chat_completion(ChatCompletionRequest.model_validate(body))
            else:
                result = await completion.create_completion(CompletionRequest.model_validate(body))
        except ValidationError as e:
            return _error(_validation_error(e))
        except EngineDeadError:
            raise
        except Exception as e:  # vLLM raises some request errors (VLLMValidationError) rather than returning them
            return _error(create_error_response(e))
        if isinstance(result, ErrorResponse):
            return _error(result)
        if isinstance(result, BaseModel):
            return _answer(HTTPStatus.OK, result.model_dump(mode="json"))
        return cast("AsyncGenerator[str, None]", result)
