"""Every JSON reply of the endpoint is built here, so that each shape is written once: a reply from a value or
from bytes already serialized, a worker route's ``{"ok": true, ...}``, and the two error shapes, ours
(``{"error": "message"}``) and OpenAI's (``{"error": {"message", "type", "code", "param"}}``) under /openai."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ... import codec

__all__ = ["error_reply", "json_reply", "ok_reply", "openai_error", "openai_error_body", "raw_json_reply"]

_JSON = "application/json"
_OK = codec.dumps({"ok": True})


def raw_json_reply(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A reply whose JSON is serialized already (stored outputs and stream items go out as stored)."""
    return web.Response(body=body, status=status, content_type=_JSON, headers=headers)


def json_reply(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return raw_json_reply(codec.dumps(obj), status, headers)


def ok_reply(headers: dict[str, str] | None = None, **fields: Any) -> web.Response:
    """A worker route's success: ``{"ok": true}`` and ``fields``."""
    return raw_json_reply(codec.dumps({"ok": True, **fields}) if fields else _OK, headers=headers)


def error_reply(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """Every error but the OpenAI routes' (``ErrorReply``)."""
    return json_reply({"error": message}, status, headers)


def openai_error_body(message: str, status: int, kind: str) -> dict[str, Any]:
    """OpenAI's error object, ``param`` included as OpenAI sends it (``OpenAIErrorReply``)."""
    return {"error": {"message": message, "type": kind, "code": status, "param": None}}


def openai_error(
    message: str, status: int, kind: str = "invalid_request_error", headers: dict[str, str] | None = None
) -> web.Response:
    return json_reply(openai_error_body(message, status, kind), status, headers)
