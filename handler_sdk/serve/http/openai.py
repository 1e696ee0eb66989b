"""OpenAI-compatible routes: each request becomes a job ``{"openai_route": "/v1/...", "openai_input": body}``.

The worker's handler (e.g. the built-in vLLM one) answers in one of two ways, and the route relays it:

* a final output ``{"status_code": int, "body": json}``: sent as that status with that JSON body (this is how an
  OpenAI error's status code travels through job-done);
* for ``stream: true``, stream items that are SSE event strings (``"data: {...}\\n\\n"``), relayed to the client
  as they land, in order, as ``text/event-stream``.

A client that disconnects mid-stream cancels its job. A handler that is not OpenAI-aware simply has its output
returned as the JSON body. A ``body`` of null is answered with the status alone and an empty body (vLLM's /health);
a request body that is not a JSON object travels as its text, so the worker's vLLM answers its own 400. A stream
whose job fails (its engine died) ends with an OpenAI-shaped error event and ``[DONE]``, never by hanging. Any
other path under ``/openai`` is answered here, 404 listing the routes served, without making a job.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from ... import codec
from ...errors import BadRequest, NestedTooDeep
from ...models import JobStatus, RunRequest
from ..state.api import JobState, JobView
from .replies import json_reply, raw_json_reply
from .replies import openai_error as _openai_error
from .replies import openai_error_body as _error_body
from .router import Routes
from .web import read_body

__all__ = ["add_openai_routes"]


# (method, path under /openai, the job's openai_route): what the worker's OpenAI handler answers.
ROUTES = (
    ("POST", "/v1/chat/completions", "/v1/chat/completions"),
    ("POST", "/v1/completions", "/v1/completions"),
    ("POST", "/v1/responses", "/v1/responses"),
    ("POST", "/v1/embeddings", "/v1/embeddings"),
    ("GET", "/v1/models", "/v1/models"),
    ("POST", "/tokenize", "/tokenize"),
    ("POST", "/detokenize", "/detokenize"),
    ("GET", "/version", "/version"),
    ("GET", "/health", "/health"),
)


def _final(r: JobView) -> web.Response:
    if r.status is JobStatus.COMPLETED:
        out = codec.loads(r.output) if r.output is not None else None
        if isinstance(out, dict) and isinstance(out.get("status_code"), int) and "body" in out:
            if out["body"] is None:  # vLLM's answer has no body (its /health): the status alone, as vLLM sends it
                return web.Response(status=out["status_code"])
            return json_reply(out["body"], out["status_code"])
        return raw_json_reply(r.output or b"null")
    if r.status is JobStatus.TIMED_OUT:
        return _openai_error(r.error or "request timed out", 504, "timeout")
    if r.status is JobStatus.CANCELLED:
        return _openai_error("request was cancelled", 499, "cancelled")
    return _openai_error(r.error or "the handler failed", 500, "internal_error")


class OpenAIRoutes:
    def __init__(self, state: JobState, body_cap: int, wait_s: float) -> None:
        self.state = state
        self.body_cap = body_cap
        self.wait_s = wait_s

    async def _body(self, request: web.Request) -> dict[str, Any] | str:
        """The body as a JSON object, or else its text: a body that is not JSON, or JSON that is no object (an
        array, a number, nothing at all), goes to the worker as it came, so that vLLM's request model refuses it
        with vLLM's own 400, as vLLM's server does. Integers beyond 64 bits stay exact (codec), so vLLM answers
        its own range error for them too."""
        data = await read_body(request, self.body_cap)
        try:
            body = codec.loads_request(data) if data.strip() else None
        except NestedTooDeep:
            raise  # it could not travel in the job input either
        except BadRequest:
            body = None
        return body if isinstance(body, dict) else data.decode("utf-8", errors="replace")

    def route(self, method: str, route: str) -> Any:
        async def answer(request: web.Request) -> web.StreamResponse:
            return await self.relay(request, route, None if method == "GET" else await self._body(request))

        return answer

    async def unknown(self, request: web.Request) -> web.StreamResponse:
        """Any other /openai path: answered here, with the routes we serve, and no job made."""
        tail = "/" + request.match_info.get("tail", "")
        served = ", ".join(f"{m} /openai{p}" for m, p, _ in ROUTES)
        allowed = [m for m, p, _ in ROUTES if p == tail]
        if allowed:
            what = f"{request.method} is not allowed on /openai{tail}"
            return _openai_error(what, 405, "MethodNotAllowed", {"Allow": ",".join(allowed)})
        return _openai_error(f"no OpenAI route /openai{tail}; served: {served}", 404, "NotFoundError")

    async def relay(self, request: web.Request, route: str, body: dict[str, Any] | str | None) -> web.StreamResponse:
        req = RunRequest(input={"openai_route": route, "openai_input": body})
        r, _ = await self.state.submit(req, sync=True, route="openai")
        streaming = isinstance(body, dict) and bool(body.get("stream"))
        resp: web.StreamResponse | None = None
        try:
            async with asyncio.timeout(self.wait_s):
                if streaming:
                    resp = await _relay_sse(request, self.state, r.id)
                r = await self.state.wait_terminal(r, float("inf"))
        except TimeoutError:
            await self.state.cancel(r.id)
            if resp is None:
                return _openai_error("no reply from a worker in time", 504, "timeout")
        except (asyncio.CancelledError, ConnectionResetError):
            # The client went away: free the worker (shielded: this task is being cancelled).
            await asyncio.shield(self.state.cancel(r.id))
            raise
        if resp is not None:
            with contextlib.suppress(ConnectionResetError):
                await resp.write_eof()
            return resp
        return _final(r)


_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


async def _relay_sse(request: web.Request, state: JobState, job_id: str) -> web.StreamResponse | None:
    """Write each SSE item as it lands; None when the job ended without any (then its final output answers)."""
    resp: web.StreamResponse | None = None
    sent = 0
    with state.watch(job_id) as w:
        while True:
            r, items = await state.read_stream(job_id, sent)
            if items:
                if resp is None:
                    resp = web.StreamResponse(
                        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
                    )
                    await resp.prepare(request)
                for raw in items:
                    out = codec.loads(raw)["output"]
                    await resp.write(out.encode() if isinstance(out, str) else b"data: " + codec.dumps(out) + b"\n\n")
                sent += len(items)
            if r.status.terminal:
                if resp is not None and r.status is not JobStatus.COMPLETED:
                    r = await state.status(job_id)  # its error (a store's stream read carries only the status)
                    # Part of the answer is out: the failure (the engine died, its worker was lost, a timeout, a
                    # cancel) ends the stream as an OpenAI-shaped error event and [DONE], as vLLM's server ends a
                    # failed stream.
                    kind = "timeout" if r.status is JobStatus.TIMED_OUT else "InternalServerError"
                    error = _error_body(r.error or f"the request ended {r.status.value}", 500, kind)
                    await resp.write(b"data: " + codec.dumps(error) + b"\n\ndata: [DONE]\n\n")
                return resp
            await w.wait(float("inf"))


def add_openai_routes(routes: Routes, state: JobState, *, body_cap: int = 20 << 20, wait_s: float = 600.0) -> None:
    o = OpenAIRoutes(state, body_cap, wait_s)
    for method, path, route in ROUTES:
        routes.add(method, "/openai" + path, o.route(method, route))
    routes.add("*", "/openai/{tail:.*}", o.unknown)
