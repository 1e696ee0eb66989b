"""The HTTP layer's answers on a real aiohttp app on loopback: how the router answers what the state side refuses,
and the one family of JSON replies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from handler_sdk import lifecycle
from handler_sdk.errors import BadRequest
from handler_sdk.models import ErrorReply, JobStatus, OpenAIErrorReply
from handler_sdk.serve.http.replies import openai_error_body
from handler_sdk.serve.http.router import Routes
from tests.conftest import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[str, Handler], Awaitable[str]]]:
    """Serve one route, ``GET /v2/ep/<path>``, behind the router; returns the endpoint's base address."""
    runners: list[web.AppRunner] = []

    async def start(path: str, handler: Handler) -> str:
        app = web.Application()
        routes = Routes(app, "ep")
        routes.get(path, handler)
        routes.finish()
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}/v2/ep"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_an_illegal_transition_reaching_the_router_is_answered_409_with_a_json_error(
    serve: Callable[[str, Handler], Awaitable[str]], http: aiohttp.ClientSession
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        lifecycle.check(JobStatus.COMPLETED, JobStatus.IN_PROGRESS)
        raise AssertionError("unreachable")

    base = await serve("/status/{job_id}", refuse)
    async with http.get(f"{base}/status/x") as resp:
        assert resp.status == 409
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert ErrorReply.model_validate(body).error == "job is COMPLETED; it cannot become IN_PROGRESS"


async def test_an_error_under_openai_has_openais_shape_with_param_null_and_others_ours(
    serve: Callable[[str, Handler], Awaitable[str]], http: aiohttp.ClientSession
) -> None:
    async def bad(request: web.Request) -> web.Response:
        raise BadRequest("no such model")

    base = await serve("/openai/v1/models", bad)
    async with http.get(f"{base}/openai/v1/models") as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body == {"error": {"message": "no such model", "type": "invalid_request_error", "code": 400, "param": None}}
    assert body == openai_error_body("no such model", 400, "invalid_request_error")
    OpenAIErrorReply.model_validate(body)

    async with http.get(f"{base}/nothing-here") as resp:
        assert resp.status == 404
        assert ErrorReply.model_validate(await resp.json()).error == "no such route: GET /v2/ep/nothing-here"
