"""The worker routes (DESIGN section 3): job-take(-batch), job-stop, job-done, job-stream, ping, and our
job-handback extension. Every reply carries the extensions header, so our worker knows what it may use."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from ... import codec
from ...errors import BadRequest, HTTPError, NestedTooDeep
from ...models import (
    MAX_STREAM_BATCH_BYTES,
    MAX_STREAM_BYTES,
    DoneBatchBody,
    DoneBody,
    JobStatus,
    StreamBody,
    make_error_details,
)  # fmt: skip
from ..state.api import JobState, Lease, lease_payload
from .replies import json_reply, ok_reply, raw_json_reply
from .router import Routes
from .web import query_int, read_json

__all__ = ["EXTENSIONS", "add_worker_routes", "normalize_error"]

EXTENSIONS = "1; ext=stream-batch,hand-back,done-batch,stream-multi,take-pipeline"
_HEADERS = {"X-Handler-SDK": EXTENSIONS}
# Results of one job-done-batch applied between two turns of the event loop (about 0.3 ms of work).
_YIELD_EVERY = 64
# Error details parsed from a worker's JSON string are stored, sent in replies and webhooks: they must encode again.
_ERROR_DEPTH = 64
_CLASS_RE = re.compile(r"^<class '(?:[\w.]*\.)?(\w+)'>$")
_GEN_RE = re.compile(r"^handler: (?P<msg>.*?)\s*\ntraceback: (?P<tb>.*)$", re.S)


def _hung_up(request: web.Request) -> Callable[[], bool]:
    """Whether the client has closed this request's connection (aiohttp drops the transport when it notices)."""

    def gone() -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    return gone


def normalize_error(value: Any) -> tuple[str, dict[str, Any]]:
    """Every error shape a worker may post becomes ``("Type: message", errorDetails)``.

    Handles our dict, runpod's JSON-in-a-string (with ``error_type`` like ``"<class 'ValueError'>"``), runpod's
    generator string ``"handler: msg \\ntraceback: ..."``, and any plain string or value.
    """
    if isinstance(value, str):
        try:
            parsed = codec.loads(value)
        except ValueError:
            parsed = None
        if parsed is not None and codec.depth_over(parsed, _ERROR_DEPTH) is not None:
            parsed = None  # read without the request's depth limit: kept as the text it came as
        if isinstance(parsed, dict):
            value = parsed
        elif m := _GEN_RE.match(value):
            return f"HandlerError: {m['msg']}", make_error_details("HandlerError", m["msg"], m["tb"])
        else:
            return value, make_error_details("HandlerError", value)
    if isinstance(value, dict):
        raw_type = str(value.get("error_type") or "HandlerError")
        m = _CLASS_RE.match(raw_type)
        etype = m.group(1) if m else raw_type
        message = value.get("error_message", value.get("message"))
        message = codec.dumps_str(value) if message is None else str(message)
        details = make_error_details(
            etype, message, value.get("error_traceback"), worker_id=value.get("worker_id"),
            hostname=value.get("hostname"),
        )  # fmt: skip
        return f"{etype}: {message}", details
    text = codec.dumps_str(value)
    return text, make_error_details("HandlerError", text)


def _stream_items(raw: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """The outputs and their metrics from a job-stream body: runpod's one ``output``, or our ``outputs``."""
    try:
        body = StreamBody.model_validate(raw)
    except ValidationError as e:
        raise BadRequest(f"invalid job-stream body: {e.errors()[0]['msg']}") from None
    if body.outputs is not None:
        ms = body.metrics if isinstance(body.metrics, list) else [None] * len(body.outputs)
        if len(ms) != len(body.outputs):
            raise BadRequest("job-stream: metrics must have one entry per output")
        return body.outputs, ms
    if "output" in raw:
        return [body.output], [body.metrics if isinstance(body.metrics, dict) else None]
    raise BadRequest('job-stream body needs "output" (or our "outputs" extension)')


def _done_body(raw: Any) -> DoneBody:
    """A job-done body validated; an empty body reads as ``{}``."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise BadRequest("job-done body must be a JSON object")
    try:
        return DoneBody.model_validate(raw)
    except ValidationError as e:
        raise BadRequest(f"invalid job-done body: {e.errors()[0]['msg']}") from None


def _done_or_error(raw: dict[str, Any]) -> DoneBody | BadRequest:
    try:
        return _done_body(raw)
    except BadRequest as e:
        return e


def _done_items(raw: Any) -> list[tuple[str, DoneBody | BadRequest]]:
    """The results of a job-done-batch body, each validated or with the 400 it earns. One validation covers the
    whole batch when every result is valid (the usual case); else each is validated alone, so that a bad result
    is judged without its neighbours."""
    try:
        return [(x.id, x) for x in DoneBatchBody.model_validate(raw).results]
    except ValidationError:
        pass
    results = raw.get("results") if isinstance(raw, dict) else None
    if not isinstance(results, list) or not all(isinstance(x, dict) and isinstance(x.get("id"), str) for x in results):
        raise BadRequest('job-done-batch body must be {"results": [{"id": "job id", ...}, ...]}')
    return [(x["id"], _done_or_error(x)) for x in results]


def plain_results(raw: Any) -> list[tuple[str, Any]] | None:
    """A job-done-batch body whose every result is a plain success, read without pydantic: ``(id, output)`` per
    result, which is what DoneBatchBody makes of it (an output and no error, a status COMPLETED or none). None
    when any result is more than that (an error, another status, stopPod, a field of some other worker's): the
    model's reading then judges the whole body, so every answer but a plain success's stays as it was."""
    if type(raw) is not dict or type(results := raw.get("results")) is not list:
        return None
    plain = []
    for x in results:
        # (A non-ASCII id goes to the model, which refuses one that is not valid unicode: a lone surrogate.)
        if type(x) is not dict or type(job_id := x.get("id")) is not str or not job_id.isascii():
            return None
        n = len(x)
        if "output" in x:
            n -= 1
        if n == 2:
            if x.get("status") != "COMPLETED":
                return None
        elif n != 1:
            return None
        plain.append((job_id, x.get("output")))
    return plain


class WorkerRoutes:
    def __init__(self, state: JobState, hold_s: float, result_cap: int, max_batch: int) -> None:
        self.state = state
        self.hold_s = hold_s
        self.result_cap = result_cap
        self.max_batch = max_batch

    async def _take(self, request: web.Request, n: int) -> Sequence[Lease]:
        wid = request.match_info["worker_id"]
        busy = {"0": False, "1": True}.get(request.query.get("job_in_progress", ""))
        return await self.state.take(wid, n, self.hold_s, gone=_hung_up(request), busy=busy)

    async def take(self, request: web.Request) -> web.Response:
        jobs = await self._take(request, 1)
        if not jobs:
            return raw_json_reply(b"", 204, _HEADERS)
        return raw_json_reply(codec.dumps(lease_payload(jobs[0])), headers=_HEADERS)

    async def take_batch(self, request: web.Request) -> web.Response:
        n = query_int(request, "batch_size", 1, 1, self.max_batch)
        assert n is not None
        jobs = await self._take(request, n)
        if not jobs:
            return raw_json_reply(b"", 204, _HEADERS)
        # Each lease's dict built here (lease_payload's, without a call per job).
        leases = [
            {"id": r.id, "input": r.input, "traceparent": r.traceparent}
            if r.execution_timeout is None
            else lease_payload(r)
            for r in jobs
        ]
        return raw_json_reply(codec.dumps(leases), headers=_HEADERS)

    async def stop(self, request: web.Request) -> web.Response:
        ids = await self.state.stops(request.match_info["worker_id"], self.hold_s)
        return json_reply({"jobsToStop": ids}, headers=_HEADERS)

    async def _apply_done(self, wid: str, jid: str, body: DoneBody, final_stream: bool, durable: bool) -> None:
        """One job-done body applied; raises Conflict/NotFound."""
        output = None if body.output is None else codec.dumps(body.output)
        if body.status is JobStatus.IN_PROGRESS:
            if output is not None:
                await self.state.progress(wid, jid, output)
            return
        if body.error is not None:
            error, details = normalize_error(body.error)
            failed = body.status if body.status in (JobStatus.TIMED_OUT, JobStatus.CANCELLED) else JobStatus.FAILED
            await self.state.done(wid, jid, failed, output=output, error=error, details=details, durable=durable)
            return
        if final_stream and output == b"[]":
            output = None  # runpod's final post of a generator that does not aggregate: no output
        ok = body.status if body.status is not None and body.status.terminal else JobStatus.COMPLETED
        await self.state.done(wid, jid, ok, output=output, durable=durable)

    async def _judge(self, wid: str, jid: str, body: DoneBody | BadRequest) -> int:
        """One result of a batch applied on its own: its HTTP status as job-done would have answered it."""
        if isinstance(body, BadRequest):
            return body.status
        try:
            await self._apply_done(wid, jid, body, False, False)
        except HTTPError as e:
            return e.status
        return 200

    async def _apply_plain(self, wid: str, results: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        """A batch of plain successes applied as ``_judge`` applies each (same codes), in one coroutine."""
        codes = []
        for i in range(0, len(results), _YIELD_EVERY):
            if i:
                await asyncio.sleep(0)  # (as in done_batch)
            part = results[i : i + _YIELD_EVERY]
            encoded = [(jid, None if output is None else codec.dumps(output)) for jid, output in part]
            verdicts = await self.state.completed_many(wid, encoded)
            codes += [
                {"id": jid, "code": 200 if e is None else e.status} for (jid, _), e in zip(part, verdicts, strict=True)
            ]
        return codes

    async def done(self, request: web.Request) -> web.Response:
        wid, jid = request.match_info["worker_id"], request.match_info["job_id"]
        try:
            raw = await read_json(request, self.result_cap + MAX_STREAM_BYTES, allow_empty=True)
        except NestedTooDeep as e:
            # A result nested too deep to store (runpod's worker encodes with the standard library, which has no
            # such limit): the job fails with the reason, rather than the worker retrying a 400 until it gives up.
            raw = {"error": make_error_details("OutputNotSerializable", f"the job's result: {e}")}
        # Durable before we answer: the worker forgets the result once we do.
        await self._apply_done(wid, jid, _done_body(raw), request.query.get("isStream") == "true", True)
        return ok_reply(_HEADERS)

    async def done_batch(self, request: web.Request) -> web.Response:
        """Our extension: ``{"results": [{"id": job_id, ...job-done body...}, ...]}`` in one request and one
        journal commit. Each result is judged alone: the reply lists ``{"id", "code"}`` with 200, 400, 404 or 409."""
        wid = request.match_info["worker_id"]
        raw = await read_json(request, self.result_cap + MAX_STREAM_BYTES)
        if (plain := plain_results(raw)) is not None:
            codes = await self._apply_plain(wid, plain)
            await self.state.flush()
            return ok_reply(_HEADERS, results=codes)
        codes = []
        for i, (jid, body) in enumerate(_done_items(raw)):
            if i and not i % _YIELD_EVERY:
                # A big batch would hold the loop for milliseconds: let a waiting take through, or the worker
                # that sent both sits idle until every result here is applied.
                await asyncio.sleep(0)
            codes.append({"id": jid, "code": await self._judge(wid, jid, body)})
        await self.state.flush()
        return ok_reply(_HEADERS, results=codes)

    async def stream(self, request: web.Request) -> web.Response:
        wid, jid = request.match_info["worker_id"], request.match_info["job_id"]
        raw = await read_json(request, MAX_STREAM_BYTES)
        if not isinstance(raw, dict):
            raise BadRequest("job-stream body must be a JSON object")
        outputs, ms = _stream_items(raw)
        n = await self.state.stream(
            wid, jid, [codec.dumps(o) for o in outputs], [None if m is None else codec.dumps(m) for m in ms]
        )
        return ok_reply(_HEADERS, items=n)

    async def _stream_one(self, wid: str, raw: dict[str, Any]) -> dict[str, Any]:
        """One job's part of a job-stream-batch, judged alone: the status job-stream would have answered."""
        try:
            outputs, ms = _stream_items(raw)
            n = await self.state.stream(
                wid, raw["id"], [codec.dumps(o) for o in outputs], [None if m is None else codec.dumps(m) for m in ms]
            )
        except HTTPError as e:
            return {"id": raw["id"], "code": e.status}
        return {"id": raw["id"], "code": 200, "items": n}

    async def stream_batch(self, request: web.Request) -> web.Response:
        """Our extension: the stream items of many jobs in one request (``{"streams": [{"id": job_id, "outputs":
        [...], "metrics": [...]}, ...]}``), so a worker streaming many jobs at a GPU's token rate sends one request
        per round trip, not one per job. Each part is judged alone: ``{"id", "code", "items"}`` per part."""
        wid = request.match_info["worker_id"]
        raw = await read_json(request, MAX_STREAM_BATCH_BYTES + MAX_STREAM_BYTES)
        parts = raw.get("streams") if isinstance(raw, dict) else None
        if not isinstance(parts, list) or not all(isinstance(x, dict) and isinstance(x.get("id"), str) for x in parts):
            raise BadRequest('job-stream-batch body must be {"streams": [{"id": "job id", "outputs": [...]}, ...]}')
        results = []
        for i, part in enumerate(parts):
            if i and not i % _YIELD_EVERY:
                await asyncio.sleep(0)
            results.append(await self._stream_one(wid, part))
        return ok_reply(_HEADERS, results=results)

    async def ping(self, request: web.Request) -> web.Response:
        ids = [i for i in request.query.get("job_id", "").split(",") if i]
        initializing = request.query.get("initializing") == "1"
        await self.state.ping(request.match_info["worker_id"], ids, initializing=initializing)
        return ok_reply(_HEADERS)

    async def hand_back(self, request: web.Request) -> web.Response:
        raw = await read_json(request, MAX_STREAM_BYTES)
        ids = raw.get("ids") if isinstance(raw, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise BadRequest('job-handback body must be {"ids": ["job id", ...]}')
        n = await self.state.hand_back(request.match_info["worker_id"], ids)
        return ok_reply(_HEADERS, handedBack=n)


def add_worker_routes(
    routes: Routes, state: JobState, *, hold_s: float = 3.0, result_cap: int = 20 << 20, max_batch: int = 1000
) -> None:
    w = WorkerRoutes(state, hold_s, result_cap, max_batch)
    routes.get("/job-take/{worker_id}", w.take)
    routes.get("/job-take-batch/{worker_id}", w.take_batch)
    routes.get("/job-stop/{worker_id}", w.stop)
    routes.post("/job-done/{worker_id}/{job_id}", w.done)
    routes.post("/job-done-batch/{worker_id}", w.done_batch)
    routes.post("/job-stream/{worker_id}/{job_id}", w.stream)
    routes.post("/job-stream-batch/{worker_id}", w.stream_batch)
    routes.get("/ping/{worker_id}", w.ping)
    routes.post("/job-handback/{worker_id}", w.hand_back)
