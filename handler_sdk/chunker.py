"""Stream items under the 1 MiB limit, and request bodies that carry several of them.

Two guarantees, both measured in serialized (orjson) bytes:

* every item's ``output`` is at most ``MAX_ITEM_OUTPUT`` bytes: a string over it is split into ordered pieces,
  each its own item; any other value over it is an error;
* every stream request body is at most ``MAX_STREAM_BYTES``: ``MAX_ITEM_OUTPUT`` leaves room for the envelope and
  a metrics dict of up to ``METRICS_RESERVE`` bytes, and ``pack`` only groups items while the body still fits.

Items are never merged: grouping puts several items in one body, each keeps its own place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from . import codec
from .errors import OutputTooLarge
from .models import MAX_STREAM_BYTES
from .outputs import Chunk

__all__ = [
    "MAX_ITEM_OUTPUT",
    "METRICS_RESERVE",
    "Chunk",
    "EncodedItem",
    "batch_body",
    "encode",
    "encode_item",
    "pack",
    "single_body",
    "split",
]

METRICS_RESERVE = 8 * 1024
# {"outputs":[ ... ],"metrics":[ ... ]} around one item, with generous slack.
_ENVELOPE = 64
MAX_ITEM_OUTPUT = MAX_STREAM_BYTES - METRICS_RESERVE - _ENVELOPE


class EncodedItem:
    """One stream item with its output already serialized, so sizes are exact and nothing is encoded twice.

    A plain slotted class, not a frozen dataclass: one is made per yield, and frozen init costs twice as much."""

    __slots__ = ("metrics", "output", "size")

    def __init__(self, output: bytes, metrics: bytes | None = None) -> None:
        self.output = output
        self.metrics = metrics
        # Its share of a batch body: the output, and its metrics or a null in the metrics array.
        self.size = len(output) + (4 if metrics is None else len(metrics))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EncodedItem) and (self.output, self.metrics) == (other.output, other.metrics)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EncodedItem({self.output[:40]!r}, {self.metrics!r})"


def _cut(body: memoryview, end: int) -> int:
    """The largest safe cut <= ``end`` in a JSON string's encoded body: never inside a UTF-8 sequence or an
    escape. orjson writes non-ASCII as raw UTF-8 and escapes only \\X and \\u00XX (controls)."""
    # A UTF-8 continuation byte (0b10xxxxxx) belongs to the character before it.
    while end > 0 and body[end] & 0xC0 == 0x80:
        end -= 1
    # An escape is at most 6 bytes (\u00XX): look for one that starts before the cut and runs past it.
    for start in range(end - 1, max(end - 6, -1), -1):
        if body[start] != 0x5C:  # backslash
            continue
        run = 1  # a backslash starts an escape iff the run of backslashes ending at it is odd
        while start - run >= 0 and body[start - run] == 0x5C:
            run += 1
        if run % 2 == 1:
            width = 6 if body[start + 1] == 0x75 else 2  # \uXXXX or \X
            return start if start + width > end else end
        break  # an escaped backslash ends any escape that could span the cut
    return end


def _split_str(data: bytes, limit: int) -> list[bytes]:
    """Cut the JSON encoding of a string into pieces of at most ``limit`` bytes, each a valid JSON string, in
    order, covering every character: slices of the one encoding, never encoded again."""
    body = memoryview(data)[1:-1]
    room = limit - 2
    pieces: list[bytes] = []
    pos, n = 0, len(body)
    while pos < n:
        end = n if n - pos <= room else _cut(body, pos + room)
        pieces.append(b'"' + body[pos:end] + b'"')
        pos = end
    return pieces


def split(value: Any, limit: int = MAX_ITEM_OUTPUT) -> list[bytes]:
    """Serialize one yielded value into one or more item outputs of at most ``limit`` bytes each.

    Raises OutputNotSerializable for values orjson cannot encode and OutputTooLarge for a non-string over the
    limit.
    """
    data = codec.dumps(value)
    return [data] if len(data) <= limit else _oversized(value, data, limit)


def _oversized(value: Any, data: bytes, limit: int) -> list[bytes]:
    if isinstance(value, str):
        return _split_str(data, limit)
    raise OutputTooLarge(
        f"stream item is {len(data)} bytes serialized, over the {limit}-byte limit for one item; "
        "only strings are split automatically: yield smaller items"
    )


_RESERVED = ("stream_index", "scenario")


def _metrics(metrics: dict[str, Any]) -> bytes:
    if any(k in metrics for k in _RESERVED):
        metrics = {k: v for k, v in metrics.items() if k not in _RESERVED}
    m = codec.dumps(metrics)
    if len(m) > METRICS_RESERVE:
        raise OutputTooLarge(f"stream item metrics are {len(m)} bytes serialized, over {METRICS_RESERVE}")
    return m


def encode_item(output: bytes, metrics: dict[str, Any] | None) -> EncodedItem:
    """Pair an output with its metrics. ``stream_index`` and ``scenario`` belong to the endpoint, which numbers
    the items as they land, so a handler's own values for them are dropped."""
    return EncodedItem(output, _metrics(metrics) if metrics else None)


def encode(value: Any, metrics: dict[str, Any] | None = None, limit: int = MAX_ITEM_OUTPUT) -> list[EncodedItem]:
    """One yield as its stream items: ``split`` and ``encode_item`` in one call, the runner's per-yield path.
    A split string's pieces share the yield's metrics."""
    m = _metrics(metrics) if metrics else None
    data = codec.dumps(value)
    if len(data) <= limit:
        return [EncodedItem(data, m)]
    return [EncodedItem(piece, m) for piece in _oversized(value, data, limit)]


def pack(items: Iterable[EncodedItem], limit: int = MAX_STREAM_BYTES) -> Iterator[list[EncodedItem]]:
    """Group consecutive items into bodies of at most ``limit`` bytes (as built by ``batch_body``)."""
    group: list[EncodedItem] = []
    size = _ENVELOPE
    for item in items:
        cost = item.size + 2  # two commas
        if size + cost > limit and group:
            yield group
            group, size = [], _ENVELOPE
        group.append(item)
        size += cost
    if group:
        yield group


def batch_body(items: list[EncodedItem]) -> bytes:
    """``{"outputs":[...],"metrics":[...]}``: the batch extension's body, built from pre-encoded parts."""
    outputs = b",".join([i.output for i in items])
    metrics = [i.metrics for i in items]
    if metrics.count(None) == len(metrics):
        return b"".join((b'{"outputs":[', outputs, b"]}"))
    m = b",".join([b"null" if x is None else x for x in metrics])
    return b"".join((b'{"outputs":[', outputs, b'],"metrics":[', m, b"]}"))


def single_body(item: EncodedItem) -> bytes:
    """``{"output":...}``: one item per request, as the runpod protocol sends it."""
    if item.metrics is None:
        return b'{"output":' + item.output + b"}"
    return b'{"output":' + item.output + b',"metrics":' + item.metrics + b"}"
