"""serve's /openai routes with plain handlers (no engine): the 404 that lists our routes without making a job,
the body kept exact when it holds a long integer, and a stream cut by a failed job ending in an error event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from handler_sdk.handler import Handler
from handler_sdk.job import Job
from handler_sdk.serve.http.openai import ROUTES

# The same tests on both job stores: the embedded default and a real redis-server.
pytestmark = pytest.mark.stores("sqlite", "redis")


async def _echo(job: Job) -> Any:
    return {"status_code": 200, "body": {"got": job.input}}


async def _cut(job: Job) -> AsyncIterator[Any]:
    yield 'data: {"choices": [{"delta": {"content": "a"}}]}\n\n'
    raise RuntimeError("the engine died")


@pytest.mark.stores("sqlite")  # reads the in-memory broker
async def test_unknown_openai_path_is_a_404_listing_the_routes_and_makes_no_job(endpoint_factory, http):
    ep = await endpoint_factory(Handler(_echo))
    async with http.post(f"{ep.url}/openai/v1/audio/speech", json={"model": "x"}) as r:
        assert r.status == 404
        body = await r.json()
    assert body["error"]["type"] == "NotFoundError" and body["error"]["code"] == 404
    for method, path, _ in ROUTES:
        assert f"{method} /openai{path}" in body["error"]["message"]
    async with http.get(f"{ep.url}/openai/v1/chat/completions") as r:
        assert r.status == 405 and r.headers["Allow"] == "POST"
    assert ep.server.broker.jobs == {}


async def test_a_body_with_an_integer_beyond_64_bits_reaches_the_handler_exact(endpoint_factory, http):
    seen: list[Any] = []

    async def keep(job: Job) -> Any:
        seen.append(job.input)
        return {"status_code": 200, "body": {}}

    ep = await endpoint_factory(Handler(keep))
    raw = '{"model": "m", "prompt": "x", "seed": -9223372036854775809}'
    async with http.post(f"{ep.url}/openai/v1/completions", data=raw) as r:
        assert r.status == 200
    assert seen[0]["openai_route"] == "/v1/completions"
    assert seen[0]["openai_input"]["seed"] == -9223372036854775809 and type(seen[0]["openai_input"]["seed"]) is int


async def test_a_stream_whose_job_fails_ends_with_an_openai_error_event_and_done(endpoint_factory, http):
    ep = await endpoint_factory(Handler(_cut))
    async with http.post(f"{ep.url}/openai/v1/chat/completions", json={"stream": True}) as r:
        text = await r.text()
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "a"
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert "the engine died" in error["message"] and {"message", "type", "code", "param"} <= set(error)


async def test_an_answer_without_a_body_is_the_status_alone_with_an_empty_body(endpoint_factory, http):
    async def healthy(job: Job) -> Any:
        return {"status_code": 200, "body": None}  # vLLM's /health: no body at all

    ep = await endpoint_factory(Handler(healthy))
    async with http.get(f"{ep.url}/openai/health") as r:
        assert r.status == 200
        assert await r.read() == b""
        assert r.headers.get("Content-Type", "") != "application/json"


@pytest.mark.parametrize("raw", ["this is not valid json{{{", '["not", "an", "object"]', "42", "null", ""])
async def test_a_body_that_is_not_a_json_object_reaches_the_handler_as_its_text(endpoint_factory, http, raw):
    """So that vLLM's request model answers it with vLLM's own 400 (the worker parses the text as vLLM's
    server does); it is never streamed, whatever it says."""
    seen: list[Any] = []

    async def keep(job: Job) -> Any:
        seen.append(job.input)
        return {"status_code": 400, "body": {"error": {"message": "refused", "type": "Bad Request", "code": 400}}}

    ep = await endpoint_factory(Handler(keep))
    async with http.post(f"{ep.url}/openai/v1/chat/completions", data=raw) as r:
        assert r.status == 400 and (await r.json())["error"]["message"] == "refused"
    assert seen == [{"openai_route": "/v1/chat/completions", "openai_input": raw}]
