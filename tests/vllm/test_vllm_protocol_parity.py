"""Protocol parity with vLLM's own OpenAI server: the protocol-level cases of vLLM's tests/entrypoints/openai
(version, health, models, tokenize/detokenize, completions, chat, responses, invalid bodies) sent over HTTP both
to vLLM's own FastAPI app and to serve's ``/openai`` routes, each answered on the SAME session engine.

vLLM's app is built in-process as its server builds it (``build_app`` + ``init_app_state`` from the server's own
argument parser) on the session's ``AsyncLLM``, and served by uvicorn on loopback; serve runs in-process with the
ready-made handler, its setup hook handing over the session engine. Each case must get the same status, content
type and body from both, up to the fields that differ per request (ids, timestamps) and, for streams, up to how
the tokens are split into events. Where vLLM's answer has no counterpart by design (an unknown path, where serve
answers itself with the routes it serves), the status is compared and our shape checked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import LORA_NAME
from parity_cases import CASES, MODEL

from handler_sdk.serve.http.openai import ROUTES
from handler_sdk.serve.server import ServeConfig, Server
from handler_sdk.vllm import Engine, handler

pytestmark = pytest.mark.vllm

# Per-request values: compared by type only.
VOLATILE = {"id", "created", "created_at", "request_id", "system_fingerprint", "item_id", "response_id"}


@dataclasses.dataclass
class Reply:
    status: int
    content_type: str
    body: Any  # parsed JSON, the SSE events (parsed), or the raw text when neither


@dataclasses.dataclass
class Servers:
    vllm: str  # base URL of vLLM's own app (routes at its root)
    ours: str  # base URL of serve's /openai
    http: aiohttp.ClientSession
    server: Server


async def _vllm_app(engine: Engine, lora_dir: Path) -> Any:
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    # The session engine's serving options, as vLLM's server flags (conftest.SESSION_ENV).
    argv = ["--model", engine.config.model, "--served-model-name", MODEL, "--enable-auto-tool-choice",
            "--tool-call-parser", "hermes", "--lora-modules", f"{LORA_NAME}={lora_dir}",
            "--disable-log-stats", "--disable-fastapi-docs"]  # fmt: skip
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    llm = engine.llm
    tasks = await llm.get_supported_tasks()
    app = build_app(args, tasks, llm.model_config)
    await init_app_state(llm, app.state, args, tasks)
    return app


@pytest.fixture(scope="module")
async def servers(
    engine: Engine, tiny_lora_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Servers]:
    import uvicorn

    app = await _vllm_app(engine, tiny_lora_dir)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning",
                                       access_log=False))  # fmt: skip
    uv.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    uv_task = asyncio.create_task(uv.serve())
    while not uv.started:
        assert not uv_task.done(), uv_task
        await asyncio.sleep(0.02)
    port = uv.servers[0].sockets[0].getsockname()[1]

    async def session_engine() -> Engine:
        return engine

    ours = dataclasses.replace(handler, setup=session_engine)
    cfg = ServeConfig(port=0, data_dir=tmp_path_factory.mktemp("parity"), rate_limits=False, take_hold_s=0.5)
    server = Server(cfg, ours)
    await server.start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        try:
            yield Servers(f"http://127.0.0.1:{port}", f"{server.url}/openai", http, server)
        finally:
            await server.close()
            uv.should_exit = True
            await uv_task


async def call(s: Servers, base: str, method: str, path: str, body: Any, raw: bool) -> Reply:
    data = body if raw else (None if body is None else json.dumps(body))
    headers = {"Content-Type": "application/json"} if data is not None else {}
    async with s.http.request(method, base + path, data=data, headers=headers) as r:
        text = await r.text()
        ctype = r.headers.get("Content-Type", "").split(";")[0]
        status = r.status
    if ctype == "text/event-stream":
        return Reply(status, ctype, _events(text))
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = text
    return Reply(status, ctype, parsed)


def _events(text: str) -> list[Any]:
    events: list[Any] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        data = fields.get("data", "")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def norm(x: Any, key: str | None = None) -> Any:
    """The value with the per-request fields replaced by their type."""
    if key in VOLATILE and x is not None:
        return f"<{type(x).__name__}>"
    if isinstance(x, dict):
        return {k: norm(v, k) for k, v in x.items()}
    if isinstance(x, list):
        return [norm(v) for v in x]
    return x


def stream_summary(events: list[Any]) -> Any:
    """What a stream says, whatever the split of its tokens into events: the shape of each kind of event, the
    text, tool-call arguments and finish reason of each choice, the usage, the sequence numbers' count aside."""
    if not events:
        return []
    shapes: set[str] = set()
    text: dict[Any, str] = {}
    finish: dict[Any, Any] = {}
    usage = []
    kinds: list[str] = []
    for e in events:
        if e == "[DONE]":
            kinds.append("[DONE]")
            continue
        if "type" in e and "sequence_number" in e:  # the Responses API: typed events
            if not kinds or kinds[-1] != e["type"]:
                kinds.append(e["type"])
            if e["type"].endswith(".delta"):
                text[e.get("output_index", 0)] = text.get(e.get("output_index", 0), "") + e.get("delta", "")
            if e["type"] == "response.completed":
                usage.append(norm(e["response"]))
            continue
        shapes.add(json.dumps(_keys(e), sort_keys=True))
        for c in e.get("choices") or ():
            i = c["index"]
            piece = c.get("text") or (c.get("delta") or {}).get("content") or ""
            for call in (c.get("delta") or {}).get("tool_calls") or ():
                piece += (call.get("function") or {}).get("name") or ""
                piece += (call.get("function") or {}).get("arguments") or ""
            text[i] = text.get(i, "") + piece
            if c.get("finish_reason") is not None:
                finish[i] = c["finish_reason"]
        if e.get("usage"):
            usage.append(e["usage"])
    return {"shapes": sorted(shapes), "text": text, "finish": finish, "usage": usage, "kinds": kinds}


def _keys(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _keys(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_keys(x[0])] if x else []
    return type(x).__name__


def comparable(r: Reply) -> Any:
    body = stream_summary(r.body) if r.content_type == "text/event-stream" else norm(r.body)
    return {"status": r.status, "content_type": r.content_type, "body": body}


@pytest.mark.parametrize(("status", "method", "path", "body", "raw"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_openai_route_answers_as_vllms_own_server(
    servers: Servers, status: int, method: str, path: str, body: Any, raw: bool
) -> None:
    theirs = await call(servers, servers.vllm, method, path, body, raw)
    ours = await call(servers, servers.ours, method, path, body, raw)
    assert theirs.status == status, theirs
    assert comparable(ours) == comparable(theirs), (theirs, ours)


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/audio/voices"), ("POST", "/v1/audio/speech"),
                                              ("POST", "/v1/score")])  # fmt: skip
async def test_an_unknown_path_is_a_404_as_in_vllm_listing_the_routes_we_serve(
    servers: Servers, method: str, path: str
) -> None:
    theirs = await call(servers, servers.vllm, method, path, {"model": MODEL}, False)
    ours = await call(servers, servers.ours, method, path, {"model": MODEL}, False)
    assert ours.status == theirs.status == 404
    assert ours.body["error"]["type"] == "NotFoundError"
    assert all(f"{m} /openai{p}" in ours.body["error"]["message"] for m, p, _ in ROUTES)


async def test_embeddings_answer_as_vllm_where_the_engine_pools(servers: Servers, engine: Engine) -> None:
    if "embed" not in await engine.llm.get_supported_tasks():
        pytest.skip("the session engine generates; embeddings are compared on a pooling engine only")
    body = {"model": MODEL, "input": ["hello", "there"]}
    theirs = await call(servers, servers.vllm, "POST", "/v1/embeddings", body, False)
    ours = await call(servers, servers.ours, "POST", "/v1/embeddings", body, False)
    assert comparable(ours) == comparable(theirs)
