"""OpenAI-compatible routes: each request becomes a job ``{"openai_route": "/v1/...", "openai_input": body}``.

The worker's handler (e.g. the built-in vLLM one) answers in one of two ways, and the route relays it:

* a final output ``{"status_code": int, "body": json}``: sent as that status with that JSON body (this is how an
  OpenAI error's status code travels through job-done);
* for ``stream: true``, stream items that are SSE event strings (``"data: {...}\\n\\n"``), relayed to the client
  as they land, in order, as ``text/event-stream``.

A client that disconnects mid-stream cancels its job. A handler that is not OpenAI-aware simply has its output
returned as the JSON body.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from .. import codec
from ..errors import BadRequest
from ..models import JobStatus, RunRequest
from .broker import Broker
from .record import JobRecord
from .routes import Routes
from .web import read_json

__all__ = ["add_openai_routes"]


def _openai_error(message: str, status: int, kind: str = "invalid_request_error") -> web.Response:
    body = {"error": {"message": message, "type": kind, "code": status}}
    return web.Response(body=codec.dumps(body), status=status, content_type="application/json")


def _final(r: JobRecord) -> web.Response:
    if r.status is JobStatus.COMPLETED:
        out = codec.loads(r.output) if r.output is not None else None
        if isinstance(out, dict) and isinstance(out.get("status_code"), int) and "body" in out:
            return web.Response(body=codec.dumps(out["body"]), status=out["status_code"],
                                content_type="application/json")  # fmt: skip
        return web.Response(body=r.output or b"null", content_type="application/json")
    if r.status is JobStatus.TIMED_OUT:
        return _openai_error(r.error or "request timed out", 504, "timeout")
    if r.status is JobStatus.CANCELLED:
        return _openai_error("request was cancelled", 499, "cancelled")
    return _openai_error(r.error or "the handler failed", 500, "internal_error")


class OpenAIRoutes:
    def __init__(self, broker: Broker, body_cap: int, wait_s: float) -> None:
        self.broker = broker
        self.body_cap = body_cap
        self.wait_s = wait_s

    async def _body(self, request: web.Request) -> dict[str, Any]:
        body = await read_json(request, self.body_cap)
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        return body

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self.relay(request, "/v1/chat/completions", await self._body(request))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self.relay(request, "/v1/completions", await self._body(request))

    async def models(self, request: web.Request) -> web.StreamResponse:
        return await self.relay(request, "/v1/models", None)

    async def relay(self, request: web.Request, route: str, body: dict[str, Any] | None) -> web.StreamResponse:
        req = RunRequest(input={"openai_route": route, "openai_input": body})
        r = self.broker.submit(req, sync=True)
        streaming = body is not None and bool(body.get("stream"))
        resp: web.StreamResponse | None = None
        try:
            async with asyncio.timeout(self.wait_s):
                resp = await (_relay_sse(request, r) if streaming else _wait_end(r))
        except TimeoutError:
            self.broker.cancel(r.id)
            if resp is None:
                return _openai_error("no reply from a worker in time", 504, "timeout")
        except (asyncio.CancelledError, ConnectionResetError):
            self.broker.cancel(r.id)  # the client went away: free the worker
            raise
        if resp is not None:
            with contextlib.suppress(ConnectionResetError):
                await resp.write_eof()
            return resp
        return _final(r)


async def _wait_end(r: JobRecord) -> None:
    while not r.status.terminal:
        await r.watch().wait()


async def _relay_sse(request: web.Request, r: JobRecord) -> web.StreamResponse | None:
    """Write each SSE item as it lands; None when the job ended without any (then its final output answers)."""
    resp: web.StreamResponse | None = None
    sent = 0
    while True:
        items = r.stream[sent:]
        if items:
            if resp is None:
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
                await resp.prepare(request)
            for raw in items:
                out = codec.loads(raw)["output"]
                await resp.write(out.encode() if isinstance(out, str) else b"data: " + codec.dumps(out) + b"\n\n")
            sent += len(items)
        if r.status.terminal and sent >= len(r.stream):
            if resp is not None and r.status in (JobStatus.FAILED, JobStatus.TIMED_OUT):
                # Part of the answer is out: the failure (e.g. its worker was lost) ends the stream as an event.
                kind = "timeout" if r.status is JobStatus.TIMED_OUT else "internal_error"
                err = {"error": {"message": r.error or "the handler failed", "type": kind, "code": 500}}
                await resp.write(b"data: " + codec.dumps(err) + b"\n\n")
            return resp
        await r.watch().wait()


def add_openai_routes(routes: Routes, broker: Broker, *, body_cap: int = 20 << 20, wait_s: float = 600.0) -> None:
    o = OpenAIRoutes(broker, body_cap, wait_s)
    routes.post("/openai/v1/chat/completions", o.chat)
    routes.post("/openai/v1/completions", o.completions)
    routes.get("/openai/v1/models", o.models)
