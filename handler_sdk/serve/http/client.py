"""The client routes of DESIGN section 2: run, runsync, status, status-sync, stream, cancel, retry, purge-queue,
health and requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from ... import codec, trace
from ...errors import BadRequest
from ...models import JobStatus, RunRequest
from ..state.api import JobState
from ..state.idempotency import KEY_HEADER, REPLAYED_HEADER, parse_key
from .replies import json_reply, raw_json_reply
from .router import Routes
from .web import query_int, read_json

__all__ = ["ClientLimits", "add_client_routes", "run_request"]

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class ClientLimits:
    run_body: int = 10 * MiB
    runsync_body: int = 20 * MiB
    default_wait_ms: int = 90_000
    min_wait_ms: int = 1_000
    max_wait_ms: int = 300_000
    # An empty /stream reply on a running job waits this long for an item, so polling clients don't spin.
    stream_hold_ms: int = 1_000


def run_request(body: Any) -> RunRequest:
    """The body of /run and /runsync as a RunRequest; BadRequest naming what is wrong."""
    if not isinstance(body, dict):
        raise BadRequest('request body must be a JSON object like {"input": {...}}')
    if "input" not in body:
        raise BadRequest('missing "input": the body must be {"input": {...}}')
    if not isinstance(body["input"], dict):
        raise BadRequest('"input" must be a JSON object')
    try:
        return RunRequest.model_validate(body)
    except ValidationError as e:
        fields = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise BadRequest(f"invalid request: {fields}") from None


def _key_and_trace(request: web.Request) -> tuple[str | None, str | None]:
    """A submit's Idempotency-Key (BadRequest when malformed) and valid traceparent, each None when not sent
    (most requests: two header lookups, and neither parser called)."""
    headers = request.headers
    key, tp = headers.get(KEY_HEADER), headers.get("traceparent")
    return (None if key is None else parse_key(key)), (None if tp is None else trace.parse(tp))


class ClientRoutes:
    def __init__(self, state: JobState, lim: ClientLimits) -> None:
        self.state = state
        self.lim = lim

    def _wait_s(self, request: web.Request) -> float:
        lim = self.lim
        ms = query_int(request, "wait", lim.default_wait_ms, lim.min_wait_ms, lim.max_wait_ms)
        assert ms is not None
        return ms / 1000

    async def run(self, request: web.Request) -> web.Response:
        key, tp = _key_and_trace(request)
        req = run_request(await read_json(request, self.lim.run_body))
        r, replayed = await self.state.submit(req, key=key, trace=tp)
        # The reply is the job as submitted: the in-process worker may already have started it. A replay says
        # where the job is now.
        reply = {"id": r.id, "status": (r.status if replayed else JobStatus.IN_QUEUE).value}
        return json_reply(reply, headers=_REPLAYED if replayed else None)

    async def runsync(self, request: web.Request) -> web.Response:
        key, tp = _key_and_trace(request)
        req = run_request(await read_json(request, self.lim.runsync_body))
        r, replayed = await self.state.runsync(req, key=key, trace=tp, timeout=self._wait_s(request))
        headers = _REPLAYED if replayed else None
        if r.status.terminal:
            return json_reply(r.reply(), headers=headers)
        return json_reply({"id": r.id, "status": r.status.value}, headers=headers)

    async def status(self, request: web.Request) -> web.Response:
        return json_reply((await self.state.status(request.match_info["job_id"], _ttl(request))).reply())

    async def status_sync(self, request: web.Request) -> web.Response:
        r = await self.state.status(request.match_info["job_id"], _ttl(request))
        r = await self.state.wait_terminal(r, self._wait_s(request))
        return json_reply(r.reply())

    async def stream(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        start = query_int(request, "from", None, 0, 2**62)
        with self.state.watch(job_id) as w:
            r, items = await self.state.read_stream(job_id, start)
            hold = self.lim.stream_hold_ms / 1000
            if not items and not r.status.terminal and hold > 0 and await w.wait(hold):
                r, items = await self.state.read_stream(job_id, start)
        head = b'{"id":' + codec.dumps(r.id) + b',"status":"' + r.status.value.encode() + b'","stream":['
        return raw_json_reply(head + b",".join(items) + b"]}")

    async def cancel(self, request: web.Request) -> web.Response:
        r = await self.state.cancel(request.match_info["job_id"])
        return json_reply({"id": r.id, "status": r.status.value})

    async def retry(self, request: web.Request) -> web.Response:
        r = await self.state.retry(request.match_info["job_id"])
        return json_reply({"id": r.id, "status": JobStatus.IN_QUEUE.value})  # as queued, whatever ran since

    async def purge(self, request: web.Request) -> web.Response:
        return json_reply({"removed": await self.state.purge(), "status": "completed"})

    async def health(self, request: web.Request) -> web.Response:
        return json_reply(await self.state.health())

    async def requests(self, request: web.Request) -> web.Response:
        limit = query_int(request, "limit", 50, 1, 500)
        offset = query_int(request, "offset", 0, 0, 2**62)
        raw = request.query.get("status")
        try:
            st = JobStatus(raw) if raw else None
        except ValueError:
            raise BadRequest(f"unknown status {raw!r}; one of {', '.join(s.value for s in JobStatus)}") from None
        assert limit is not None and offset is not None
        return json_reply(await self.state.requests(limit, offset, st))


_REPLAYED = {REPLAYED_HEADER: "true"}


def _ttl(request: web.Request) -> int | None:
    return query_int(request, "ttl", None, 0, 2**62)


def add_client_routes(routes: Routes, state: JobState, lim: ClientLimits | None = None) -> None:
    c = ClientRoutes(state, lim or ClientLimits())
    routes.post("/run", c.run)
    routes.post("/runsync", c.runsync)
    for verb in ("GET", "POST"):
        routes.add(verb, "/status/{job_id}", c.status)
        routes.add(verb, "/status-sync/{job_id}", c.status_sync)
        routes.add(verb, "/stream/{job_id}", c.stream)
        routes.add(verb, "/health", c.health)
    routes.post("/cancel/{job_id}", c.cancel)
    routes.post("/retry/{job_id}", c.retry)
    routes.post("/purge-queue", c.purge)
    routes.get("/requests", c.requests)
