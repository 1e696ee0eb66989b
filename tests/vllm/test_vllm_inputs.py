"""Job input parsing, without an engine: which shapes are accepted and how errors name the field."""

from __future__ import annotations

from typing import Any

import pytest
from vllm.sampling_params import RequestOutputKind

from handler_sdk.errors import InvalidInput
from handler_sdk.vllm import BatchPolicy, GenerateRequest, OpenAIRequest, parse_job_input, sampling_params
from handler_sdk.vllm.openai import normalize_route

pytestmark = pytest.mark.vllm


def test_any_sampling_params_field_is_passed_to_vllm() -> None:
    params = sampling_params({"temperature": 0.2, "top_k": 5, "stop": ["\n"], "n": 2, "max_tokens": 9, "seed": 3})
    assert (params.temperature, params.top_k, params.stop, params.n, params.max_tokens, params.seed) == (
        0.2, 5, ["\n"], 2, 9, 3,
    )  # fmt: skip


def test_sampling_params_always_stream_deltas() -> None:
    assert sampling_params({}).output_kind is RequestOutputKind.DELTA


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"temperature": "hot"}, "sampling_params.temperature: Expected `float`, got `str`"),
        ({"top_p": 1.5}, "sampling_params.top_p: top_p must be in (0, 1]"),
        ({"n": 0}, "sampling_params.n:"),
        ({"bogus": 1}, "sampling_params.bogus: not a vLLM SamplingParams field"),
        ({"output_kind": 2}, "sampling_params.output_kind: not a vLLM SamplingParams field"),
        ({"_eos_token_id": 2}, "sampling_params._eos_token_id: not a vLLM SamplingParams field"),
    ],
)
def test_invalid_sampling_params_raise_invalid_input_naming_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as e:
        sampling_params(raw)
    assert str(e.value).startswith(message), str(e.value)


def test_prompt_and_messages_inputs() -> None:
    prompt = parse_job_input({"prompt": "hi", "sampling_params": {"max_tokens": 3}, "stream": True})
    assert isinstance(prompt, GenerateRequest) and prompt.prompt == "hi" and prompt.stream
    chat = parse_job_input({"messages": [{"role": "user", "content": "hi"}]})
    assert isinstance(chat, GenerateRequest) and chat.messages and not chat.stream


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "exactly one of"),
        ({"prompt": "a", "messages": []}, "exactly one of"),
        ({"prompt": 3}, "prompt: Input should be a valid string"),
        ({"messages": "hi"}, "messages: Input should be a valid list"),
        ({"prompt": "a", "stream": "sometimes"}, "stream: Input should be a valid boolean"),
        ({"prompt": "a", "sampling_params": [1]}, "sampling_params: Input should be a valid dictionary"),
        ({"prompt": "a", "max_batch_size": 0}, "max_batch_size: Input should be greater than or equal to 1"),
        ({"prompt": "a", "extra": 1}, "extra: Extra inputs are not permitted"),
        ([1, 2], "the job input must be an object"),
        ({"openai_route": 5}, "openai_route must be a string"),
        ({"openai_route": "/v1/models", "openai_input": 5}, "openai_input must be a JSON object (or its JSON text)"),
    ],
)
def test_malformed_inputs_raise_invalid_input_saying_what_is_wrong(raw: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as e:
        parse_job_input(raw)
    assert message in str(e.value), str(e.value)


def test_openai_jobs_parse_to_route_and_body() -> None:
    assert parse_job_input({"openai_route": "/v1/models", "openai_input": None}) == OpenAIRequest("/v1/models", None)
    body = {"model": "m", "messages": []}
    assert parse_job_input({"openai_route": "/v1/chat/completions", "openai_input": body}) == OpenAIRequest(
        "/v1/chat/completions", body
    )


@pytest.mark.parametrize("route", ["/v1/models", "v1/models", "/v1/models/", "/openai/v1/models", " /v1/models "])
def test_openai_routes_are_normalized(route: str) -> None:
    assert normalize_route(route) == "/v1/models"


def test_job_batch_knobs_override_the_handler_policy() -> None:
    request = GenerateRequest(prompt="a", max_batch_size=8, batch_size_growth_factor=2)
    assert request.batch_policy(BatchPolicy(1, 50, 3)) == BatchPolicy(1, 8, 2)
    assert GenerateRequest(prompt="a").batch_policy(BatchPolicy(1, 50, 3)) == BatchPolicy(1, 50, 3)


def test_job_batch_knobs_that_contradict_each_other_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="batch sizes"):
        GenerateRequest(prompt="a", min_batch_size=10, max_batch_size=5).batch_policy(BatchPolicy())
