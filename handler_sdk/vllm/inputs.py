"""The job inputs the vLLM handler accepts, parsed with errors that name the offending field.

Two shapes:

* generation: ``{"prompt": str}`` or ``{"messages": [...]}``, with optional ``"sampling_params"`` (any vLLM
  ``SamplingParams`` field, ``structured_outputs`` included), ``"stream"`` (default false), ``"lora"`` (an
  adapter's name), and worker-vllm's ``apply_chat_template``, ``use_openai_format`` and per-job batch knobs
  (``max_batch_size``, ``min_batch_size``, ``batch_size_growth_factor``);
* OpenAI: ``{"openai_route": "/v1/...", "openai_input": body_or_null}``, what the endpoint makes of a request to
  ``/openai/v1/...``;
* embeddings (a pooling model): ``{"embed": ["text", ...]}`` (or one string).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import RequestOutputKind

from ..errors import ConfigError, InvalidInput
from .config import BatchPolicy

__all__ = ["SAMPLING_FIELDS", "EmbedRequest", "GenerateRequest", "OpenAIRequest", "parse_job_input", "sampling_params"]

# SamplingParams fields a job may set. output_kind is ours (streaming needs deltas); the rest are vLLM internals.
SAMPLING_FIELDS = frozenset(
    name
    for name in SamplingParams.__struct_fields__
    if not name.startswith("_") and name not in {"output_kind", "skip_clone", "output_text_buffer_length"}
)


def sampling_params(raw: dict[str, Any]) -> SamplingParams:
    """Build vLLM SamplingParams from a job's ``sampling_params``; InvalidInput names the field at fault."""
    unknown = sorted(set(raw) - SAMPLING_FIELDS)
    if unknown:
        raise InvalidInput(f"sampling_params.{unknown[0]}: not a vLLM SamplingParams field")
    try:
        # convert (not the constructor) checks each field's type and names it, then runs vLLM's own checks.
        params = msgspec.convert(raw, SamplingParams)
    except msgspec.ValidationError as e:
        msg, _, path = str(e).partition(" - at `$.")
        where = "sampling_params." + path.rstrip("`") if path else "sampling_params"
        raise InvalidInput(f"{where}: {msg}") from None
    except (VLLMValidationError, ValueError, TypeError) as e:
        raise InvalidInput(f"{_field_of(e, raw)}: {e}") from None
    params.output_kind = RequestOutputKind.DELTA
    return params


def _field_of(e: Exception, raw: dict[str, Any]) -> str:
    parameter = getattr(e, "parameter", None)
    if not parameter:
        # Not every vLLM check names its parameter, but their messages start with it ("n must be at least 1").
        words = str(e).split(maxsplit=1)
        parameter = words[0].strip("`'\":") if words else None
    return f"sampling_params.{parameter}" if parameter in raw else "sampling_params"


class GenerateRequest(BaseModel):
    """A generation job: exactly one of ``prompt`` and ``messages``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    sampling_params: dict[str, Any] = Field(default_factory=dict)
    stream: bool = False
    max_batch_size: int | None = Field(default=None, ge=1)
    min_batch_size: int | None = Field(default=None, ge=1)
    batch_size_growth_factor: float | None = Field(default=None, ge=1)
    apply_chat_template: bool = False
    use_openai_format: bool = False
    lora: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError('give exactly one of "prompt" (a string) and "messages" (a chat message list)')
        return self

    def params(self) -> SamplingParams:
        """The vLLM SamplingParams, set to stream deltas."""
        return sampling_params(self.sampling_params)

    def batch_policy(self, default: BatchPolicy) -> BatchPolicy:
        """The handler's batch policy with this job's overrides applied."""
        try:
            return BatchPolicy(
                self.min_batch_size or default.min_size,
                self.max_batch_size or default.max_size,
                self.batch_size_growth_factor or default.growth,
            )
        except ConfigError as e:
            raise InvalidInput(f"batch sizes: {e}") from None


class EmbedRequest(BaseModel):
    """An embeddings job for a pooling model: the texts to embed."""

    model_config = ConfigDict(extra="forbid")

    embed: list[str] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _one_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("embed"), str):
            return {**data, "embed": [data["embed"]]}
        return data


@dataclass(frozen=True, slots=True)
class OpenAIRequest:
    """An OpenAI API request relayed as a job: ``route`` such as ``/v1/chat/completions``, and its JSON body."""

    route: str
    body: dict[str, Any] | str | None  # an object, or its JSON text


def _pydantic_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"].removeprefix("Value error, "))
    return "; ".join(parts)


def parse_job_input(raw: Any) -> GenerateRequest | OpenAIRequest | EmbedRequest:
    """Parse a job's input into one of the two request kinds; InvalidInput says what is wrong."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"the job input must be an object, got {type(raw).__name__}")
    if "openai_route" in raw:
        route, body = raw["openai_route"], raw.get("openai_input")
        if not isinstance(route, str):
            raise InvalidInput("openai_route must be a string such as /v1/chat/completions")
        if body is not None and not isinstance(body, dict | str):
            raise InvalidInput("openai_input must be a JSON object (or its JSON text), or null")
        return OpenAIRequest(route, body)
    try:
        if "embed" in raw:
            return EmbedRequest.model_validate(raw)
        return GenerateRequest.model_validate(raw)
    except ValidationError as e:
        raise InvalidInput(_pydantic_message(e)) from None
