"""HTTP plumbing shared by the client, worker and OpenAI routes: bodies under a cap, query values (the replies are
``replies.py``'s)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ... import codec
from ...errors import BadRequest, PayloadTooLarge, RequestTimeout

__all__ = ["BODY_TIMEOUT", "query_int", "read_body", "read_json"]

BODY_TIMEOUT = web.AppKey("body_timeout_s", float)
"""Seconds a request body may take to arrive, set on the app (``--body-timeout``); 30 when unset."""


async def read_body(request: web.Request, cap: int) -> bytes:
    """The whole body, or 413 once it passes ``cap`` bytes (checked before reading when the length is declared),
    or 408 when it has not all arrived within the body timeout: a stalled upload must not hold its route's
    concurrency slot (and a connection) for ever."""
    if request.content.is_eof():  # all here already (a small body comes with its headers): no wait
        declared = request.content_length
        if declared is not None and declared <= cap:
            return await request.read()  # (what _read_body does with it, one coroutine fewer a request)
        return await _read_body(request, cap)
    timeout = request.config_dict.get(BODY_TIMEOUT, 30.0)
    try:
        async with asyncio.timeout(timeout):
            return await _read_body(request, cap)
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {timeout:g} s") from None


async def _read_body(request: web.Request, cap: int) -> bytes:
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
    if not request.query_string:  # most requests: no query to parse
        return default
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name}={raw!r} is not an integer") from None
    return max(lo, min(hi, value))
