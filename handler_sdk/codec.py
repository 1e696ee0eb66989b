"""The one place that calls orjson.

Every byte that crosses a wire or the store is made here, so the size limits measure exactly what is sent.

Two limits of orjson are handled here rather than left to surprise a caller:

* **Depth.** orjson reads 1,024 levels of nesting but writes only 254. A request body nested deeper than
  ``MAX_DEPTH`` is refused (400) before it becomes a job: a job whose input cannot be written could not be
  journaled, handed to a remote worker, or reported.
* **Integers beyond 64 bits.** orjson reads them as floats (``2**70`` becomes ``1.1805916207174113e+21``) and
  refuses to write them. A document with a long enough run of digits to hold one is read again by the standard
  library, which keeps every integer exact, and such integers are written by it too. Nobody's number is changed.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from .errors import BadRequest, NestedTooDeep, OutputNotSerializable

__all__ = ["MAX_DEPTH", "Fragment", "depth_over", "dumps", "dumps_canonical", "dumps_str", "loads", "loads_request"]

_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY

Fragment = orjson.Fragment
"""Already-serialized JSON that is embedded as is (saves re-encoding large outputs)."""

# orjson writes 254 levels. A request body may nest this deep: its input (one level less) then still encodes
# inside the wrappers it travels in (a job-take payload in a batch list, an /openai body inside its job input).
MAX_DEPTH = 250

# orjson's output keeps the buffer it was written into: a retained 80-byte output holds ~4 KiB (measured). Records
# keep outputs for their retention (a runsync record a minute, at thousands a second) and stream items queue, so
# small outputs are copied to their exact size; above this the slack is a small fraction of the output.
_EXACT_BELOW = 16 * 1024
# data.join((b"", b"")) is data copied into a new object of exactly its size.
_TWO_EMPTY = (b"", b"")
# Every integer outside orjson's exact range (-2**63 .. 2**64-1) has at least 19 digits. A run that long (in a
# string, a float, or an integer that fits) only costs a second, exact parse.
_LONG_DIGITS = 19
_LONG_DIGITS_B = re.compile(rb"\d{19}")
_LONG_DIGITS_S = re.compile(r"\d{19}")
# Bytes are searched as a map of digit or not (every ASCII digit 1, every other byte 0) for a run of ones: twenty
# times faster than the regex over a worker's batch of results, which is mostly not digits.
_DIGIT_MAP = bytes(0x31 if 0x30 <= b <= 0x39 else 0x30 for b in range(256))
_DIGIT_RUN = b"1" * _LONG_DIGITS
_INT_RANGE_ERROR = "Integer exceeds 64-bit range"


def dumps(obj: Any) -> bytes:
    """Serialize user data; a value orjson cannot encode raises OutputNotSerializable."""
    try:
        # Plain first: the options cost a third more per call, and they change nothing for what plain accepts
        # (they only add non-str keys and numpy types, which plain refuses with TypeError).
        data = orjson.dumps(obj)
    except TypeError as plain:
        try:
            data = orjson.dumps(obj, option=_OPTS)
        except TypeError as e:
            if _INT_RANGE_ERROR in str(e) or _INT_RANGE_ERROR in str(plain):
                return _dumps_exact(obj)
            raise OutputNotSerializable(f"output is not JSON-serializable: {e}") from e
    return data.join(_TWO_EMPTY) if len(data) < _EXACT_BELOW else data


def _dumps_exact(obj: Any) -> bytes:
    """The standard library's encoding, for a value holding an integer beyond 64 bits (orjson refuses it)."""
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as e:
        raise OutputNotSerializable(f"output is not JSON-serializable: {e}") from e


def dumps_canonical(obj: Any) -> bytes:
    """JSON with sorted keys, so two requests that differ only in key order compare equal (Idempotency-Key)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError as e:
        if _INT_RANGE_ERROR not in str(e):
            raise
        # An integer beyond 64 bits (which loads keeps exact): the standard library writes it (found by fuzzing).
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()


def dumps_str(obj: Any) -> str:
    return dumps(obj).decode()


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    obj = orjson.loads(data)
    if _has_long_digits(data):
        obj = _exact(data, obj)
    return obj


def loads_request(data: bytes) -> Any:
    """Parse a request body; malformed JSON, or nesting deeper than ``MAX_DEPTH``, is the client's error (400).
    Integers beyond 64 bits are kept exact."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON body: {e}") from e
    # Nesting needs a bracket per level: most bodies have too few brackets to go deep, and skip the walk. The rest
    # (a worker's batch of results has hundreds) are first written by orjson, far cheaper than the walk.
    if (
        data.count(b"[") + data.count(b"{") > MAX_DEPTH
        and not _shallow(obj)
        and (where := depth_over(obj, MAX_DEPTH)) is not None
    ):
        where = where if len(where) <= 60 else where[:60] + "..."
        raise NestedTooDeep(
            f"request body nests deeper than {MAX_DEPTH} levels (at {where or 'the top'}); "
            "flatten the input, or send it as a string"
        )
    if _has_long_digits(data):
        obj = _exact(data, obj)
    return obj


def _nested(depth: int) -> Any:
    v: Any = 0
    for _ in range(depth):
        v = [v]
    return v


def _writes(obj: Any) -> bool:
    try:
        orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return False
    return True


# orjson writes at most this many levels (254 in every version so far): a parsed body inside ``_WRAP`` more lists
# encodes exactly when it nests at most MAX_DEPTH deep. Checked once here, so that another orjson's limit only
# costs the walk.
_WRITE_LIMIT = 254
_WRAP = _WRITE_LIMIT - MAX_DEPTH
_EXACT_LIMIT = _writes(_nested(_WRITE_LIMIT)) and not _writes(_nested(_WRITE_LIMIT + 1))


def _shallow(obj: Any) -> bool:
    """True when ``obj`` (as orjson parsed it) surely nests at most MAX_DEPTH deep; False: walk it to know."""
    if not _EXACT_LIMIT:
        return False
    for _ in range(_WRAP):
        obj = [obj]
    return _writes(obj)


def depth_over(obj: Any, limit: int) -> str | None:
    """Where ``obj`` nests more than ``limit`` containers deep (a dotted path, "" for the top), else None."""
    if not _deeper_than(obj, limit):
        return None  # the usual answer, found without building a path for every value
    stack: list[tuple[Any, int, str]] = [(obj, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict):
            if depth > limit:
                return path
            stack.extend((v, depth + 1, f"{path}.{k}" if path else str(k)) for k, v in value.items())
        elif isinstance(value, list):
            if depth > limit:
                return path
            stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(value))
    return None


def _deeper_than(obj: Any, limit: int) -> bool:
    """Whether a container sits more than ``limit`` containers deep: one level of values at a time."""
    level = [obj]
    for _ in range(limit):
        below: list[Any] = []
        for v in level:
            if isinstance(v, dict):
                below.extend(v.values())
            elif isinstance(v, list):
                below.extend(v)
        if not below:
            return False
        level = below
    return any(isinstance(v, dict | list) for v in level)


def _has_long_digits(data: bytes | bytearray | memoryview | str) -> bool:
    if isinstance(data, bytes | bytearray):
        return _DIGIT_RUN in data.translate(_DIGIT_MAP)
    if isinstance(data, str):
        return _LONG_DIGITS_S.search(data) is not None
    return _LONG_DIGITS_B.search(data) is not None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _exact(data: bytes | bytearray | memoryview | str, parsed: Any) -> Any:
    """``data`` parsed again by the standard library (integers exact), when orjson's reading changed one."""
    if not _has_float(parsed):
        return parsed  # every integer orjson read was exact: the digits were in a string or a float
    raw = data if isinstance(data, str) else bytes(data)
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return parsed


def _has_float(obj: Any) -> bool:
    stack = [obj]
    while stack:
        v = stack.pop()
        if type(v) is float:
            return True
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False
