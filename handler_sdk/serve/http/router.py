"""Where every route of the endpoint is added, and what surrounds each request: the API key, the rate limit of
its group, and errors as JSON.

Each handler is wrapped once, when it is added, with what its operation needs, instead of an aiohttp middleware
working it out on every request (the middleware chain cost ~7% of a /runsync). Routes carry the endpoint id as a
fixed prefix: aiohttp finds such a route by one dict lookup, while ``/v2/{endpoint_id}/...`` patterns all share
one bucket that each request scans with a regex per route (a /health request matched the seventh: 23% of its
time). A last catch-all route answers what matched nothing: 404 (naming an unknown endpoint) or 405.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from ...errors import ConfigError, HTTPError, IllegalTransition, StateError, StoreError, Unauthorized
from ..state.limits import RateLimiter
from ..state.redis_limits import RedisRateLimiter
from .replies import error_reply, openai_error

__all__ = ["REFUSED_STATUS", "WORKER_ROUTES", "Handler", "Routes", "refused_status"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Operations of the worker protocol (bare-key auth allowed, never rate limited).
WORKER_ROUTES = frozenset(
    {"job-take", "job-take-batch", "job-stop", "job-done", "job-done-batch", "job-stream", "job-stream-batch", "ping",
     "job-handback"}
)  # fmt: skip
# A request the job store could not take (a full or unwritable disk) is answered 503, to be retried this much later.
STORE_RETRY_AFTER_S = 5
# The status each refusal of the state side (which knows no HTTP) is answered with; 409 for any other.
REFUSED_STATUS: dict[type[StateError], int] = {IllegalTransition: 409}
# Client operations that share a rate-limit budget (SEED.md groups /status, /status-sync and /stream).
_GROUP = {"status-sync": "status", "stream": "status"}
_ENDPOINT_ID = re.compile(r"[A-Za-z0-9._~-]+")


class Routes:
    """The endpoint's routes under ``/v2/{endpoint_id}``; call ``finish`` once all are added."""

    def __init__(
        self,
        app: web.Application,
        endpoint_id: str,
        api_key: str | None = None,
        limiter: RateLimiter | RedisRateLimiter | None = None,
    ) -> None:
        if not _ENDPOINT_ID.fullmatch(endpoint_id):
            raise ConfigError(f"endpoint id {endpoint_id!r} must be letters, digits, '.', '_', '~' or '-'")
        self.app = app
        self.endpoint_id = endpoint_id
        self.prefix = f"/v2/{endpoint_id}"
        self.api_key = api_key
        self.limiter = limiter
        self._fallback: web.AbstractResource | None = None

    def add(self, method: str, path: str, handler: Handler, *, root: bool = False, public: bool = False) -> None:
        """``path`` is under the prefix, e.g. ``/status/{job_id}``; its first segment names the operation.
        ``root``: the path is outside the prefix (``/metrics``); ``public``: no API key (static pages, the API
        document)."""
        op = path.split("/")[1]
        guarded = self._guard(handler, op, public=public)
        full = path if root else self.prefix + path
        if method == "GET":
            self.app.router.add_get(full, guarded)  # HEAD too
        else:
            self.app.router.add_route(method, full, guarded)

    def get(self, path: str, handler: Handler) -> None:
        self.add("GET", path, handler)

    def post(self, path: str, handler: Handler) -> None:
        self.add("POST", path, handler)

    def finish(self) -> None:
        """Add the catch-all that answers requests no route took. Last, so aiohttp tries it last."""
        self._fallback = self.app.router.add_route("*", "/{tail:.*}", self._guard(self._no_route, None)).resource

    # --- around each request -------------------------------------------------------------------------------

    def _guard(self, handler: Handler, op: str | None, *, public: bool = False) -> Handler:
        """``handler`` behind the API key and its group's rate limit, with every error answered as JSON. ``op`` is
        None for the catch-all, which reads it from the path (a worker's bare key is checked as on its route)."""
        api_key, limiter = None if public else self.api_key, self.limiter
        group = _GROUP.get(op, op) if op is not None and limiter is not None else None
        worker_route = op in WORKER_ROUTES

        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                if api_key is not None and not _authorized(
                    request.headers.get("Authorization"),
                    api_key,
                    worker_route if op is not None else _path_part(request.path, 3) in WORKER_ROUTES,
                ):
                    raise Unauthorized("missing or wrong API key (send Authorization: Bearer KEY)")
                if group is None:
                    return await handler(request)
                owed = limiter.acquire(group)  # type: ignore[union-attr]
                if not isinstance(owed, bool):
                    owed = await owed  # the window shared in Redis: one round trip
                try:
                    return await handler(request)
                finally:
                    if owed:
                        limiter.release(group)  # type: ignore[union-attr]
            except web.HTTPException as e:
                if e.status < 400:
                    raise  # a redirect, not an error
                return await _failed(e, request)
            except Exception as e:
                return await _failed(e, request)

        return guarded

    async def _no_route(self, request: web.Request) -> web.StreamResponse:
        """404, or 405 with Allow when the path is a route's but the method is not (the catch-all takes those
        too, as aiohttp tries it after the route that refused the method)."""
        ep = _path_part(request.path, 2)
        if ep is not None and ep != self.endpoint_id:
            return _error(404, f"unknown endpoint {ep!r}", request)
        allowed: set[str] = set()
        for resource in self.app.router.resources():
            if resource is not self._fallback:
                allowed |= (await resource.resolve(request))[1]
        if allowed:
            what = f"Method Not Allowed: {request.method} {request.path}"
            return _error(405, what, request, {"Allow": ",".join(sorted(allowed))})
        return _error(404, f"no such route: {request.method} {request.path}", request)


async def _failed(e: Exception, request: web.Request) -> web.Response:
    """The JSON answer to a request whose handling raised ``e``."""
    if isinstance(e, HTTPError):
        headers = {"Retry-After": str(int(e.retry_after))} if e.retry_after is not None else None
        resp = _error(e.status, e.message, request, headers)
        if e.status == 408 and request.transport is not None:
            # Sent, then the connection closed: aiohttp would otherwise linger (10 s) for the rest of a body that
            # is stalled.
            resp.force_close()
            await resp.prepare(request)
            await resp.write_eof()
            request.transport.close()
        return resp
    if isinstance(e, StateError):
        return _error(refused_status(e), str(e), request)
    if isinstance(e, StoreError):
        log.warning("%s %s: %s", request.method, request.path, e)
        return _error(503, f"service unavailable: {e}", request, {"Retry-After": str(STORE_RETRY_AFTER_S)})
    if isinstance(e, web.HTTPException):  # raised inside aiohttp, e.g. reading a body
        return _error(e.status, f"{e.reason}: {request.method} {request.path}", request)
    # The last line of defence: a bug is reported as JSON, and logged.
    log.exception("unhandled error on %s %s", request.method, request.path, exc_info=e)
    return _error(500, f"internal error: {type(e).__name__}: {e}", request)


def refused_status(e: StateError) -> int:
    return REFUSED_STATUS.get(type(e), 409)


def _path_part(path: str, i: int) -> str | None:
    """Part ``i`` of a /v2/... path (2: the endpoint id, 3: the operation)."""
    parts = path.split("/", 4)
    return parts[i] if len(parts) > i and parts[1] == "v2" else None


def _error(status: int, message: str, request: web.Request, headers: dict[str, str] | None = None) -> web.Response:
    if _path_part(request.path, 3) == "openai":
        return openai_error(message, status, "invalid_request_error" if status < 500 else "internal_error", headers)
    return error_reply(status, message, headers)


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
