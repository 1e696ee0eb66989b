"""HTTP plumbing shared by the client, worker and OpenAI routes: JSON replies, bodies under a cap, the one
middleware (errors as JSON, auth, endpoint id, rate limits)."""

from __future__ import annotations

import functools
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .. import codec
from ..errors import BadRequest, ConfigError, HTTPError, PayloadTooLarge, Unauthorized
from .limits import RateLimiter

__all__ = [
    "WORKER_ROUTES",
    "json_reply",
    "make_middleware",
    "operation",
    "query_int",
    "raw_json_reply",
    "read_body",
    "read_json",
    "route_prefix",
]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Operations of the worker protocol (bare-key auth allowed, never rate limited).
WORKER_ROUTES = frozenset(
    {"job-take", "job-take-batch", "job-stop", "job-done", "job-done-batch", "job-stream", "ping", "job-handback"}
)
# Client operations that share a rate-limit budget (SEED.md groups /status, /status-sync and /stream).
_GROUP = {"status-sync": "status", "stream": "status"}


def route_prefix(endpoint_id: str) -> str:
    """``/v2/{endpoint_id}`` with the id written in: aiohttp finds a route with a fixed prefix by one dict lookup,
    while every ``/v2/{endpoint_id}/...`` pattern shared one bucket that each request scanned with a regex per
    route (a /health request matched its seventh: 23% of its time)."""
    if not _ENDPOINT_ID.fullmatch(endpoint_id):
        raise ConfigError(f"endpoint id {endpoint_id!r} must be letters, digits, '.', '_', '~' or '-'")
    return f"/v2/{endpoint_id}"


_ENDPOINT_ID = re.compile(r"[A-Za-z0-9._~-]+")


def operation(request: web.Request) -> str | None:
    """The operation a request addresses: the path segment after /v2/{endpoint_id}/, of its route or, when no
    route matched, of its path."""
    resource = request.match_info.route.resource
    if resource is None:
        return _path_part(request.path, 3)
    return _operation_of(resource.canonical)


@functools.lru_cache(maxsize=256)  # routes are few: each is worked out once, not per request
def _operation_of(canonical: str) -> str | None:
    return _path_part(canonical, 3)


def _path_part(path: str, i: int) -> str | None:
    """Part ``i`` of a /v2/... path (2: the endpoint id, 3: the operation)."""
    parts = path.split("/", 4)
    return parts[i] if len(parts) > i and parts[1] == "v2" else None


def json_reply(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=codec.dumps(obj), status=status, content_type="application/json", headers=headers)


def raw_json_reply(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


async def read_body(request: web.Request, cap: int) -> bytes:
    """The whole body, or 413 once it passes ``cap`` bytes (checked before reading when the length is declared)."""
    declared = request.content_length
    if declared is not None:
        if declared > cap:
            raise PayloadTooLarge(f"request body is {declared} bytes; the limit on this route is {cap}")
        # aiohttp stops at the declared length, which is within the cap: read it in one go.
        return await request.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > cap:
            raise PayloadTooLarge(f"request body is over the {cap}-byte limit on this route")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request, cap: int, *, allow_empty: bool = False) -> Any:
    """Parse the body as JSON whatever the content type says (the runpod worker mislabels it)."""
    data = await read_body(request, cap)
    if not data.strip():
        if allow_empty:
            return None
        raise BadRequest("request body is empty; expected JSON")
    return codec.loads_request(data)


def query_int(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name}={raw!r} is not an integer") from None
    return max(lo, min(hi, value))


def _error_body(status: int, message: str, request: web.Request) -> bytes:
    if operation(request) == "openai":
        kind = "invalid_request_error" if status < 500 else "internal_error"
        return codec.dumps({"error": {"message": message, "type": kind, "code": status}})
    return codec.dumps({"error": message})


def _error(status: int, message: str, request: web.Request, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_error_body(status, message, request), status=status, content_type="application/json", headers=headers
    )


def _authorized(header: str | None, key: str, worker_route: bool) -> bool:
    if header is None:
        return False
    if header.startswith("Bearer "):
        token = header[7:]
    elif worker_route:
        token = header  # the runpod worker sends the bare key
    else:
        return False
    return hmac.compare_digest(token.encode(), key.encode())


def make_middleware(endpoint_id: str, api_key: str | None, limiter: RateLimiter | None) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        op = operation(request)
        try:
            if api_key is not None and not _authorized(
                request.headers.get("Authorization"), api_key, op in WORKER_ROUTES
            ):
                raise Unauthorized("missing or wrong API key (send Authorization: Bearer KEY)")
            # Only a request that reached a route counts against a rate limit (a 404 or 405 spends nothing).
            routed = request.match_info.http_exception is None
            group = _GROUP.get(op, op) if op is not None and routed else None
            owed = limiter.acquire(group) if limiter is not None and group is not None else False
            try:
                return await handler(request)
            finally:
                if owed:
                    limiter.release(group)  # type: ignore[union-attr, arg-type]
        except HTTPError as e:
            headers = {"Retry-After": str(int(e.retry_after))} if e.retry_after is not None else None
            return _error(e.status, e.message, request, headers)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            if e.status == 404 and (ep := _path_part(request.path, 2)) not in (None, endpoint_id):
                return _error(404, f"unknown endpoint {ep!r}", request)
            msg = "no such route" if e.status == 404 else e.reason
            return _error(e.status, f"{msg}: {request.method} {request.path}", request, None)
        except Exception as e:  # the last line of defence: a bug is reported as JSON, and logged
            log.exception("unhandled error on %s %s", request.method, request.path)
            return _error(500, f"internal error: {type(e).__name__}: {e}", request)

    return middleware
