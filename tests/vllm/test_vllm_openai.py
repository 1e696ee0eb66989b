"""OpenAI jobs answered by vLLM's own serving classes, driven through run_job like any job."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from handler_sdk.models import JobStatus

pytestmark = pytest.mark.vllm

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "Say something."}]


def openai_job(route: str, body: dict[str, Any] | None) -> dict[str, Any]:
    return {"openai_route": route, "openai_input": body}


async def answer(jobs: Any, route: str, body: dict[str, Any] | None) -> tuple[int, Any, list[Any]]:
    ran = await jobs.run(openai_job(route, body))
    assert ran.outcome.status is JobStatus.COMPLETED, ran.outcome
    assert set(ran.output) == {"status_code", "body"}
    return ran.output["status_code"], ran.output["body"], ran.items


def sse_payloads(items: list[Any]) -> list[Any]:
    """Check each item is one SSE event exactly as vLLM writes it; return the decoded payloads."""
    assert items and items[-1] == "data: [DONE]\n\n"
    payloads = []
    for item in items[:-1]:
        assert isinstance(item, str) and item.startswith("data: ") and item.endswith("\n\n"), item
        payloads.append(json.loads(item.removeprefix("data: ")))
    return payloads


async def test_models_lists_the_served_model_name(jobs: Any, engine: Any) -> None:
    status, body, items = await answer(jobs, "/v1/models", None)
    assert status == 200 and items == []
    assert body["object"] == "list"
    # The session engine also loads one LoRA adapter, listed after the base model.
    assert [m["id"] for m in body["data"]][:1] == [engine.config.served_model_name] == ["tiny-llama"]


async def test_chat_completion_without_stream_returns_openai_json(jobs: Any, engine: Any) -> None:
    status, body, items = await answer(
        jobs, CHAT, {"model": "tiny-llama", "messages": MESSAGES, "max_tokens": 6, "ignore_eos": True}
    )
    assert status == 200 and items == []
    assert body["object"] == "chat.completion"
    assert body["model"] == "tiny-llama"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["usage"]["completion_tokens"] == 6
    assert engine.unfinished() == 0


async def test_chat_completion_stream_yields_vllm_sse_events_then_status(jobs: Any) -> None:
    ran = await jobs.run(
        openai_job(
            CHAT,
            {"model": "tiny-llama", "messages": MESSAGES, "max_tokens": 8, "ignore_eos": True, "stream": True},
        )
    )
    assert ran.outcome.status is JobStatus.COMPLETED, ran.outcome
    assert ran.output == {"status_code": 200, "body": None}
    payloads = sse_payloads(ran.items)
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert payloads[0]["choices"][0]["delta"].get("role") == "assistant"
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p["choices"])
    assert text
    assert any(p["choices"] and p["choices"][0].get("finish_reason") == "length" for p in payloads)
    assert all(m is None for m in ran.metrics)  # plain items: the endpoint relays them as they are


async def test_completion_without_and_with_stream(jobs: Any) -> None:
    body = {"model": "tiny-llama", "prompt": "Once upon a time", "max_tokens": 5, "ignore_eos": True}
    status, plain, _ = await answer(jobs, COMPLETIONS, body)
    assert status == 200
    assert plain["object"] == "text_completion" and isinstance(plain["choices"][0]["text"], str)
    assert plain["usage"]["completion_tokens"] == 5

    ran = await jobs.run(openai_job(COMPLETIONS, {**body, "stream": True}))
    assert ran.output == {"status_code": 200, "body": None}
    payloads = sse_payloads(ran.items)
    assert all(p["object"] == "text_completion" for p in payloads)


async def test_unknown_model_is_a_404_in_openai_error_shape(jobs: Any) -> None:
    status, body, items = await answer(jobs, CHAT, {"model": "no-such-model", "messages": MESSAGES})
    assert status == 404 and items == []
    assert body["error"]["code"] == 404
    assert body["error"]["type"] == "NotFoundError"
    assert "no-such-model" in body["error"]["message"]


async def test_max_tokens_over_the_context_is_a_400(jobs: Any, engine: Any) -> None:
    too_many = engine.llm.model_config.max_model_len + 1
    status, body, _ = await answer(jobs, CHAT, {"model": "tiny-llama", "messages": MESSAGES, "max_tokens": too_many})
    assert status == 400
    assert body["error"]["code"] == 400 and body["error"]["type"] == "BadRequestError"
    assert "max_tokens" in body["error"]["message"] or body["error"].get("param") == "max_tokens"


async def test_stream_request_that_fails_sends_only_the_error_status(jobs: Any) -> None:
    ran = await jobs.run(openai_job(CHAT, {"model": "no-such-model", "messages": MESSAGES, "stream": True}))
    assert ran.items == []
    assert ran.output["status_code"] == 404


@pytest.mark.parametrize(
    ("route", "body", "status"),
    [
        ("/v1/audio/speech", {"input": "x"}, 404),
        ("/v1/embeddings", {"input": "x"}, 400),
        (CHAT, None, 400),
        (CHAT, {"messages": "not a list"}, 400),
        (COMPLETIONS, {"model": "tiny-llama", "prompt": "x", "temperature": "hot"}, 400),
    ],
    ids=["unknown-route", "embeddings-on-a-generator", "no-body", "bad-messages", "bad-field-type"],
)
async def test_bad_requests_get_openai_errors_not_failed_jobs(
    jobs: Any, route: str, body: dict[str, Any] | None, status: int
) -> None:
    code, answer_body, _ = await answer(jobs, route, body)
    assert code == status
    assert set(answer_body["error"]) >= {"message", "type", "code"}
    assert answer_body["error"]["code"] == status


async def test_cancelling_an_sse_stream_aborts_the_vllm_request(jobs: Any, engine: Any, wait_for: Any) -> None:
    first = asyncio.Event()

    async def stall(index: int, item: Any) -> None:
        first.set()
        await asyncio.Event().wait()

    body = {"model": "tiny-llama", "prompt": "x", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    task = asyncio.create_task(jobs.run(openai_job(COMPLETIONS, body), on_item=stall))
    await asyncio.wait_for(first.wait(), 60)
    assert engine.unfinished() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_for(lambda: engine.unfinished() == 0, 1.0)
