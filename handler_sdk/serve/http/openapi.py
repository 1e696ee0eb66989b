"""The endpoint's OpenAPI 3.1 document (``/openapi.json``, ``/v2/{endpoint_id}/openapi.json``) and Swagger UI at
``/docs``, served from static files in the package.

Every schema is generated from the pydantic models of ``handler_sdk.models`` that the routes validate with (and
that the tests validate replies against); the list of operations below is checked against the app's router by a
test, so a route cannot go undocumented. When the handler has an ``input_model``, ``input`` of /run and /runsync is
that model's schema.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ... import __version__, codec, models
from ...models import JobStatus
from ..state.idempotency import KEY_HEADER
from .client import ClientLimits
from .openai import ROUTES as OPENAI_ROUTES
from .replies import raw_json_reply
from .router import Routes

__all__ = ["add_openapi_routes", "build_document"]

Schema = dict[str, Any]

_REQUESTS = (
    models.RunRequest, models.DoneBody, models.DoneBatchBody, models.StreamBody, models.StreamBatchBody,
    models.HandBackBody,
)  # fmt: skip
_REPLIES = (
    models.RunReply, models.JobReply, models.CancelReply, models.StreamReply, models.PurgeReply, models.HealthReply,
    models.RequestsReply, models.TakenJob, models.TakeStopReply, models.OkReply, models.StreamAck,
    models.HandBackReply, models.DoneBatchReply, models.StreamBatchReply, models.ErrorReply, models.OpenAIErrorReply,
    models.DashboardState, models.DashboardJobDetail,
)  # fmt: skip
_WHY = {
    400: "malformed request",
    401: "missing or wrong API key",
    404: "unknown job, route or endpoint",
    409: "the job is not in a state that allows this",
    413: "body over the route's limit",
    422: "the Idempotency-Key names another request's job",
    429: "rate limit of the route's group (Retry-After says when to retry)",
    499: "the job was cancelled",
    500: "the handler failed",
    501: "the feature is off or its extra is not installed",
    503: "the job store is unavailable",
    504: "no reply from a worker in time",
}
_CLIENT = (401, 429, 503)  # every client route
_WORKER = (401, 404)


def _ref(model: type[BaseModel] | str) -> Schema:
    return {"$ref": f"#/components/schemas/{model if isinstance(model, str) else model.__name__}"}


def _json(schema: Schema, why: str = "OK") -> Schema:
    return {"description": why, "content": {"application/json": {"schema": schema}}}


def _int_param(name: str, why: str) -> Schema:
    # Any integer is accepted: one out of range is clamped (the description says to what), not refused.
    return {"name": name, "in": "query", "required": False, "description": why, "schema": {"type": "integer"}}


def _str_param(name: str, why: str, where: str = "query", **schema: Any) -> Schema:
    return {"name": name, "in": where, "required": where == "path", "description": why,
            "schema": {"type": "string", **schema}}  # fmt: skip


@dataclass(frozen=True)
class _Op:
    methods: tuple[str, ...]
    path: str  # under the prefix, or from the root when it starts with "!"
    summary: str
    tag: str
    reply: Schema | None  # the 200 reply, as a response object
    body: Schema | None = None
    params: tuple[Schema, ...] = ()
    errors: tuple[int, ...] = ()
    extra: tuple[tuple[str, Schema], ...] = ()  # other documented responses
    public: bool = False
    openai: bool = False


def _operations(lim: ClientLimits) -> list[_Op]:
    wait = _int_param("wait", f"ms to wait for the job to end (clamped to {lim.min_wait_ms}-{lim.max_wait_ms})")
    ttl = _int_param("ttl", "shortens the job's retention to this many ms")
    job = _str_param("job_id", "the job's id", "path")
    wid = _str_param("worker_id", "the worker's id", "path")
    run_body = {"required": True, "content": {"application/json": {"schema": _ref("RunRequest")}}}
    key = _str_param(KEY_HEADER, "the same key with the same request returns the same job (at most 255 characters)",
                     "header")  # fmt: skip

    def body(m: type[BaseModel]) -> Schema:
        return {"required": True, "content": {"application/json": {"schema": _ref(m)}}}

    no_content = ("204", {"description": "no job queued (the take was held, then gave up)"})
    sse = {"schema": {"type": "string"}}
    openai_ok = {"description": "the worker's reply (an OpenAI-aware handler's status and body); SSE for stream",
                 "content": {"application/json": {"schema": {}}, "text/event-stream": sse}}  # fmt: skip
    openai_other = ("default", {"description": "the status an OpenAI-aware handler chose, with its body",
                                "content": {"application/json": {"schema": {}}}})  # fmt: skip
    # fmt: off
    return [
        _Op(("POST",), "/run", "queue a job", "client", _json(_ref(models.RunReply)), run_body, (key,),
            errors=(400, 413, 422, *_CLIENT)),
        _Op(("POST",), "/runsync", "run a job and wait for it", "client",
            _json(_ref(models.JobReply), "the finished job, or its id and status to poll"), run_body, (wait, key),
            (400, 413, 422, *_CLIENT)),
        _Op(("GET", "POST"), "/status/{job_id}", "a job's status and result", "client", _json(_ref(models.JobReply)),
            params=(job, ttl), errors=(400, 404, *_CLIENT)),
        _Op(("GET", "POST"), "/status-sync/{job_id}", "a job's status, waiting until it ends", "client",
            _json(_ref(models.JobReply)), params=(job, ttl, wait), errors=(400, 404, *_CLIENT)),
        _Op(("GET", "POST"), "/stream/{job_id}", "a job's stream items not yet read", "client",
            _json(_ref(models.StreamReply)),
            params=(job, _int_param("from", "re-read from this item, without moving the cursor")),
            errors=(400, 404, *_CLIENT)),
        _Op(("POST",), "/cancel/{job_id}", "cancel a queued or running job", "client",
            _json(_ref(models.CancelReply)), params=(job,), errors=(404, *_CLIENT)),
        _Op(("POST",), "/retry/{job_id}", "queue a FAILED or TIMED_OUT job again", "client",
            _json(_ref(models.RunReply)), params=(job,), errors=(404, 409, *_CLIENT)),
        _Op(("POST",), "/purge-queue", "remove every queued job", "client", _json(_ref(models.PurgeReply)),
            errors=_CLIENT),
        _Op(("GET", "POST"), "/health", "job counts and workers", "client", _json(_ref(models.HealthReply)),
            errors=_CLIENT),
        _Op(("GET",), "/requests", "jobs, newest first, paged", "client", _json(_ref(models.RequestsReply)),
            params=(_int_param("limit", "page size (clamped to 1-500)"), _int_param("offset", "rows to skip"),
                    _str_param("status", "only jobs in this status", enum=[s.value for s in JobStatus])),
            errors=(400, *_CLIENT)),
        *(
            _Op((method,), "/openai" + path, f"OpenAI-compatible {route}, served by the worker", "openai", openai_ok,
                {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
                if method == "POST" else None,
                errors=(400, 413, *_CLIENT, 499, 500, 504) if method == "POST" else (*_CLIENT, 499, 500, 504),
                extra=(openai_other,), openai=True)
            for method, path, route in OPENAI_ROUTES
        ),
        # The worker protocol (docs/PROTOCOL.md).
        _Op(("GET",), "/job-take/{worker_id}", "take one job (held open while none is queued)", "worker",
            _json(_ref(models.TakenJob)), params=(wid, _str_param("job_in_progress", "runpod's busy flag")),
            errors=_WORKER, extra=(no_content,)),
        _Op(("GET",), "/job-take-batch/{worker_id}", "take up to batch_size jobs", "worker",
            _json({"type": "array", "items": _ref(models.TakenJob)}),
            params=(wid, _int_param("batch_size", "most jobs to take"),
                    _str_param("job_in_progress", "runpod's busy flag")),
            errors=(400, *_WORKER), extra=(no_content,)),
        _Op(("GET",), "/job-stop/{worker_id}", "jobs this worker must stop (held open while none)", "worker",
            _json(_ref(models.TakeStopReply)), params=(wid,), errors=_WORKER),
        _Op(("POST",), "/job-done/{worker_id}/{job_id}", "a job's result (or a progress update)", "worker",
            _json(_ref(models.OkReply)), body(models.DoneBody),
            (wid, job, _str_param("isStream", "true for a generator's final post")), (400, 409, 413, *_WORKER)),
        _Op(("POST",), "/job-done-batch/{worker_id}", "several results in one request", "worker",
            _json(_ref(models.DoneBatchReply)), body(models.DoneBatchBody), (wid,), (400, 413, *_WORKER)),
        _Op(("POST",), "/job-stream/{worker_id}/{job_id}", "stream items of a running job", "worker",
            _json(_ref(models.StreamAck)), body(models.StreamBody), (wid, job), (400, 409, 413, *_WORKER)),
        _Op(("POST",), "/job-stream-batch/{worker_id}", "stream items of several running jobs", "worker",
            _json(_ref(models.StreamBatchReply)), body(models.StreamBatchBody), (wid,), (400, 413, *_WORKER)),
        _Op(("GET",), "/ping/{worker_id}", "heartbeat, with the jobs the worker runs", "worker",
            _json(_ref(models.OkReply)),
            params=(wid, _str_param("job_id", "comma-separated ids of running jobs"),
                    _str_param("initializing", "1 while the setup hook runs")), errors=_WORKER),
        _Op(("POST",), "/job-handback/{worker_id}", "return unfinished jobs to the queue", "worker",
            _json(_ref(models.HandBackReply)), body(models.HandBackBody), (wid,), (400, 413, *_WORKER)),
        # The dashboard's data: outside every rate-limit group.
        _Op(("GET",), "/dashboard/state", "the dashboard's snapshot", "dashboard",
            _json(_ref(models.DashboardState)), errors=(401,)),
        _Op(("GET",), "/dashboard/events", "the snapshot once a second, as newline-delimited JSON", "dashboard",
            {"description": "one DashboardState per line, for a while; then reconnect",
             "content": {"application/x-ndjson": {"schema": _ref(models.DashboardState)}}}, errors=(401,)),
        _Op(("GET",), "/dashboard/jobs/{job_id}", "one job in full: input, result, stream items", "dashboard",
            _json(_ref(models.DashboardJobDetail)),
            params=(job, _int_param("from", "stream items from this index"),
                    _int_param("wait", "ms to wait for something new while the job runs (clamped to 0-5000)")),
            errors=(400, 401, 404)),
        # Pages and documents.
        _Op(("GET",), "/dashboard", "the dashboard page", "pages", _page(), public=True),
        _Op(("GET",), "!/", "the dashboard page", "pages", _page(), public=True),
        _Op(("GET",), "/openapi.json", "this document", "pages", _json({"type": "object"}), public=True),
        _Op(("GET",), "!/openapi.json", "this document", "pages", _json({"type": "object"}), public=True),
        _Op(("GET",), "!/docs", "Swagger UI for this document", "pages", _page(), public=True),
        _Op(("GET",), "!/metrics", "Prometheus metrics", "pages",
            {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
            errors=(401, 501)),
    ]
    # fmt: on


def _page() -> Schema:
    return {"description": "an HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}


def _components(input_model: type[BaseModel] | None) -> dict[str, Schema]:
    entries: list[tuple[type[BaseModel], Any]] = [(m, "validation") for m in _REQUESTS]
    entries += [(m, "serialization") for m in _REPLIES]
    if input_model is not None:
        entries.append((input_model, "validation"))
    keys, top = models_json_schema(entries, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Schema] = top.get("$defs", {})
    if input_model is not None:
        name = keys[(input_model, "validation")]["$ref"].rsplit("/", 1)[1]
        run = copy.deepcopy(schemas["RunRequest"])
        run["properties"]["input"] = _ref(name)
        run["description"] = f"Body of /run and /runsync; input is the handler's {input_model.__name__}."
        schemas["RunRequest"] = run
    return schemas


# The job id /run and /runsync answer with, for the operations that read it (schemathesis follows these links).
_JOB_LINKED = ("status", "status-sync", "stream", "cancel", "retry", "dashboard/jobs")


def _links(prefix: str, ops: list[_Op]) -> Schema:
    links: Schema = {}
    for op in ops:
        name = op.path.rsplit("/{job_id}", 1)[0].lstrip("/")
        if op.path.endswith("/{job_id}") and name in _JOB_LINKED:
            for method in op.methods:
                links[f"{method.lower()}-{name.replace('/', '-')}"] = {
                    "operationId": _operation_id(method, prefix + op.path),
                    "parameters": {"job_id": "$response.body#/id"},
                }
    return links


def _operation_id(method: str, path: str) -> str:
    name = path.strip("/").replace("/", "_").replace("{", "").replace("}", "").replace(".", "_").replace("-", "_")
    return f"{method.lower()}_{name or 'root'}"


def _responses(op: _Op) -> Schema:
    out: Schema = {"200": op.reply}
    err = _ref(models.OpenAIErrorReply if op.openai else models.ErrorReply)
    for code in op.errors:
        out[str(code)] = _json(err, _WHY[code])
    for code_s, resp in op.extra:
        out[code_s] = resp
    return out


def build_document(endpoint_id: str, input_model: type[BaseModel] | None = None,
                   lim: ClientLimits | None = None) -> Schema:  # fmt: skip
    """The OpenAPI document of an endpoint serving a handler with this ``input_model`` (None: any object)."""
    prefix = f"/v2/{endpoint_id}"
    paths: dict[str, Schema] = {}
    ops = _operations(lim or ClientLimits())
    links = _links(prefix, ops)
    for op in ops:
        path = op.path[1:] if op.path.startswith("!") else prefix + op.path
        item = paths.setdefault(path, {})
        for method in op.methods:
            o: Schema = {
                "operationId": _operation_id(method, path), "summary": op.summary, "tags": [op.tag],
                "responses": _responses(op),
            }  # fmt: skip
            if op.path in ("/run", "/runsync"):
                o["responses"]["200"] = {**o["responses"]["200"], "links": links}
            if op.params:
                o["parameters"] = list(op.params)
            if op.body is not None and method == "POST":
                o["requestBody"] = op.body
            if op.public:
                o["security"] = []
            item[method.lower()] = o
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"handler_sdk endpoint {endpoint_id}",
            "version": __version__,
            "description": "The runpod-compatible endpoint API, the worker protocol, and the dashboard's data.",
        },
        "paths": paths,
        "components": {
            "schemas": _components(input_model),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


_DOCS_HTML = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>handler_sdk API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="ui"></div><script src="/docs/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui", persistAuthorization: false});</script>
</body></html>
"""
_ASSETS = {"swagger-ui-bundle.js": "application/javascript", "swagger-ui.css": "text/css"}


def add_openapi_routes(routes: Routes, input_model: type[BaseModel] | None, lim: ClientLimits | None = None) -> None:
    """The document at both paths and Swagger UI at /docs, all without the API key (they hold no data)."""
    doc = codec.dumps(build_document(routes.endpoint_id, input_model, lim))

    async def document(request: web.Request) -> web.Response:
        return raw_json_reply(doc)

    async def docs(request: web.Request) -> web.Response:
        return web.Response(body=_DOCS_HTML, content_type="text/html")

    static = resources.files("handler_sdk.serve.http") / "static" / "swagger-ui"
    assets = {name: (static / name).read_bytes() for name in _ASSETS}

    def asset(name: str) -> Any:
        async def serve(request: web.Request) -> web.Response:
            return web.Response(body=assets[name], content_type=_ASSETS[name],
                                headers={"Cache-Control": "max-age=86400"})  # fmt: skip

        return serve

    routes.add("GET", "/openapi.json", document, public=True)
    routes.add("GET", "/openapi.json", document, root=True, public=True)
    routes.add("GET", "/docs", docs, root=True, public=True)
    for name in _ASSETS:
        routes.add("GET", f"/docs/{name}", asset(name), root=True, public=True)
