"""The one place that calls orjson.

Every byte that crosses a wire or the store is made here, so the size limits measure exactly what is sent.
"""

from __future__ import annotations

from typing import Any

import orjson

from .errors import BadRequest, OutputNotSerializable

__all__ = ["Fragment", "dumps", "dumps_str", "loads", "loads_request"]

_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY

Fragment = orjson.Fragment
"""Already-serialized JSON that is embedded as is (saves re-encoding large outputs)."""


def dumps(obj: Any) -> bytes:
    """Serialize user data; a value orjson cannot encode raises OutputNotSerializable."""
    try:
        return orjson.dumps(obj, option=_OPTS)
    except TypeError as e:
        raise OutputNotSerializable(f"output is not JSON-serializable: {e}") from e


def dumps_str(obj: Any) -> str:
    return dumps(obj).decode()


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    return orjson.loads(data)


def loads_request(data: bytes) -> Any:
    """Parse a request body; malformed JSON is the client's error (400)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON body: {e}") from e
