"""The one place that calls orjson.

Every byte that crosses a wire or the store is made here, so the size limits measure exactly what is sent.
"""

from __future__ import annotations

from typing import Any

import orjson

from .errors import BadRequest, OutputNotSerializable

__all__ = ["Fragment", "dumps", "dumps_canonical", "dumps_str", "loads", "loads_request"]

_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY

Fragment = orjson.Fragment
"""Already-serialized JSON that is embedded as is (saves re-encoding large outputs)."""


# orjson's output keeps the buffer it was written into: a retained 80-byte output holds ~4 KiB (measured). Records
# keep outputs for their retention (a runsync record a minute, at thousands a second) and stream items queue, so
# small outputs are copied to their exact size; above this the slack is a small fraction of the output.
_EXACT_BELOW = 16 * 1024
# data.join((b"", b"")) is data copied into a new object of exactly its size.
_TWO_EMPTY = (b"", b"")


def dumps(obj: Any) -> bytes:
    """Serialize user data; a value orjson cannot encode raises OutputNotSerializable."""
    try:
        # Plain first: the options cost a third more per call, and they change nothing for what plain accepts
        # (they only add non-str keys and numpy types, which plain refuses with TypeError).
        data = orjson.dumps(obj)
    except TypeError:
        try:
            data = orjson.dumps(obj, option=_OPTS)
        except TypeError as e:
            raise OutputNotSerializable(f"output is not JSON-serializable: {e}") from e
    return data.join(_TWO_EMPTY) if len(data) < _EXACT_BELOW else data


def dumps_canonical(obj: Any) -> bytes:
    """JSON with sorted keys, so two requests that differ only in key order compare equal (Idempotency-Key)."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


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
