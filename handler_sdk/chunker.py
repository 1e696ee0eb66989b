"""Stream items under the 1 MiB limit, and request bodies that carry several of them.

Two guarantees, both measured in serialized (orjson) bytes:

* every item's ``output`` is at most ``MAX_ITEM_OUTPUT`` bytes: a string over it is split into ordered pieces,
  each its own item; any other value over it is an error;
* every stream request body is at most ``MAX_STREAM_BYTES``: ``MAX_ITEM_OUTPUT`` leaves room for the envelope and
  a metrics dict of up to ``METRICS_RESERVE`` bytes, and ``pack`` only groups items while the body still fits.

Items are never merged: grouping puts several items in one body, each keeps its own place.

``encode`` runs once per yield and ``pack``/``batch_body`` once per request, so a stream of small items costs
what their Python work per item costs: the hot paths make one object per item and leave loops to C.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from itertools import accumulate
from operator import attrgetter
from typing import Any, TypeAlias

from . import codec
from .errors import OutputTooLarge
from .models import MAX_STREAM_BYTES
from .outputs import Chunk

__all__ = [
    "MAX_ITEM_OUTPUT",
    "METRICS_RESERVE",
    "Chunk",
    "Encoded",
    "EncodedItem",
    "batch_body",
    "encode",
    "encode_item",
    "encode_parts",
    "pack",
    "single_body",
    "split",
]

METRICS_RESERVE = 8 * 1024
# {"outputs":[ ... ],"metrics":[ ... ]} around one item, with generous slack.
_ENVELOPE = 64
MAX_ITEM_OUTPUT = MAX_STREAM_BYTES - METRICS_RESERVE - _ENVELOPE
# An item's share of a batch body besides its output: "null" in the metrics array when it has none, and a comma
# after its entry in each array.
_NO_METRICS = 4 + 2
_COMMAS = 2

_new = object.__new__
_dumps = codec.dumps


class EncodedItem:
    """One stream item with its output already serialized, so sizes are exact and nothing is encoded twice.

    ``size`` is the item's share of a batch body: its output, its metrics or a null, and two commas.
    A plain slotted class: one is made per yield, so ``encode`` fills one in without the ``__init__`` call, which
    costs as much again as the object."""

    __slots__ = ("metrics", "output", "size")

    def __init__(self, output: bytes, metrics: bytes | None = None) -> None:
        self.output = output
        self.metrics = metrics
        self.size = len(output) + (_NO_METRICS if metrics is None else len(metrics) + _COMMAS)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EncodedItem) and (self.output, self.metrics) == (other.output, other.metrics)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EncodedItem({self.output[:40]!r}, {self.metrics!r})"


Encoded: TypeAlias = EncodedItem | list[EncodedItem]
"""What ``encode`` makes of one yield: one item, or a long string's pieces."""


def _backslashes(body: memoryview, floor: int, at: int) -> int:
    """The length of the run of backslashes ending at ``at``, counted from ``floor`` (a character's start) on.
    Counted in C: a run can be megabytes long, so a short look first and the whole piece only if it is all run."""
    lo = max(floor, at - 63)
    window = body[lo : at + 1].tobytes()
    run = len(window) - len(window.rstrip(b"\\"))
    if run == len(window) and lo > floor:
        window = body[floor : at + 1].tobytes()
        run = len(window) - len(window.rstrip(b"\\"))
    return run


def _cut(body: memoryview, pos: int, end: int) -> int:
    """The largest safe cut <= ``end`` in a JSON string's encoded body, for a piece starting at the safe cut
    ``pos``: never inside a UTF-8 sequence or an escape. orjson writes non-ASCII as raw UTF-8 and escapes only
    \\X and \\u00XX (controls)."""
    # A UTF-8 continuation byte (0b10xxxxxx) belongs to the character before it.
    while body[end] & 0xC0 == 0x80:
        end -= 1
    # An escape is at most 6 bytes (\u00XX): look for one that starts before the cut and runs past it.
    for start in range(end - 1, max(end - 6, pos - 1), -1):
        if body[start] != 0x5C:  # backslash
            continue
        # A backslash starts an escape iff the run of backslashes ending at it is odd.
        if _backslashes(body, pos, start) % 2 == 1:
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
        end = n if n - pos <= room else _cut(body, pos, pos + room)
        # One join copies the slice once; b'"' + slice + b'"' would copy it twice.
        pieces.append(b"".join((b'"', body[pos:end], b'"')))
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


# The keys the endpoint sets on each stream item (encode spells them out: keep the two in step).
_RESERVED = frozenset(("stream_index", "scenario", "attempt"))
# A cheap pre-check on serialized metrics: only those that may hold a reserved key are decoded.
_HAS_RESERVED = re.compile(b'"(?:' + b"|".join(k.encode() for k in sorted(_RESERVED)) + b')"')


def scrub_metrics(m: bytes | None) -> bytes | None:
    """A worker's serialized metrics without its own values for the keys the endpoint sets on each stream item
    (dropped, never doubled); decoded only when the bytes may hold one of them. None for metrics that are not
    a JSON object."""
    if m is None or _HAS_RESERVED.search(m) is None:
        return m
    try:
        metrics = codec.loads(m)
    except ValueError:
        return None
    if not isinstance(metrics, dict):
        return None
    return codec.dumps({k: v for k, v in metrics.items() if k not in _RESERVED})


def _metrics(metrics: dict[str, Any]) -> bytes:
    if not _RESERVED.isdisjoint(metrics):
        metrics = {k: v for k, v in metrics.items() if k not in _RESERVED}
    m = codec.dumps(metrics)
    if len(m) > METRICS_RESERVE:
        raise OutputTooLarge(f"stream item metrics are {len(m)} bytes serialized, over {METRICS_RESERVE}")
    return m


def encode_item(output: bytes, metrics: dict[str, Any] | None) -> EncodedItem:
    """Pair an output with its metrics. ``stream_index``, ``scenario`` and ``attempt`` belong to the endpoint,
    which numbers the items as they land, so a handler's own values for them are dropped."""
    return EncodedItem(output, _metrics(metrics) if metrics else None)


def encode(value: Any, metrics: dict[str, Any] | None = None, limit: int = MAX_ITEM_OUTPUT) -> Encoded:
    """One yield as its stream item, or for a string over ``limit`` its pieces in order: ``split`` and
    ``encode_item`` in one call, the runner's per-yield path. A split string's pieces share the yield's metrics.

    Serializes at once, so a value the handler mutates after yielding it is sent as it was, and a value orjson
    cannot encode fails here, at its yield. The common case returns the bare item, not a one-item list: a
    container per yield costs as much as the item itself."""
    data = _dumps(value)
    n = len(data)
    if n > limit:
        m = _metrics(metrics) if metrics else None
        return [EncodedItem(piece, m) for piece in _oversized(value, data, limit)]
    item: EncodedItem = _new(EncodedItem)
    item.output = data  # exact-size already (codec.dumps): a queued token pins no write buffer
    if metrics:
        # _metrics inlined: this runs once per token. Three lookups cost half of _RESERVED.isdisjoint, which
        # walks every key of the metrics.
        if "stream_index" in metrics or "scenario" in metrics or "attempt" in metrics:
            metrics = {k: v for k, v in metrics.items() if k not in _RESERVED}
        m = _dumps(metrics)
        if len(m) > METRICS_RESERVE:
            raise OutputTooLarge(f"stream item metrics are {len(m)} bytes serialized, over {METRICS_RESERVE}")
        item.metrics = m
        item.size = n + len(m) + _COMMAS
    else:
        item.metrics = None
        item.size = n + _NO_METRICS
    return item


def encode_parts(
    value: Any, metrics: dict[str, Any] | None = None, limit: int = MAX_ITEM_OUTPUT
) -> tuple[bytes, bytes | None] | list[EncodedItem]:
    """``encode`` for a sink that queues an item's output and metrics apart (the multiplexer's stream): the two as
    a pair, with no EncodedItem made between them (an object per token costs a fifth of the token's encode), or
    for a string over ``limit`` its pieces as ``encode`` gives them. Same bytes as ``encode``, same errors."""
    data = _dumps(value)
    if len(data) > limit:
        m = _metrics(metrics) if metrics else None
        return [EncodedItem(piece, m) for piece in _oversized(value, data, limit)]
    if not metrics:
        return data, None
    if "stream_index" in metrics or "scenario" in metrics or "attempt" in metrics:
        metrics = {k: v for k, v in metrics.items() if k not in _RESERVED}
    m = _dumps(metrics)
    if len(m) > METRICS_RESERVE:
        raise OutputTooLarge(f"stream item metrics are {len(m)} bytes serialized, over {METRICS_RESERVE}")
    return data, m


_size = attrgetter("size")


def pack(items: Iterable[EncodedItem], limit: int = MAX_STREAM_BYTES) -> Iterator[list[EncodedItem]]:
    """Group consecutive items into bodies of at most ``limit`` bytes (as built by ``batch_body``): each body
    takes items while the next still fits, and an item too big for any body goes alone."""
    items = items if isinstance(items, list) else list(items)
    # Running totals of the items' sizes: a body's end is found by bisection instead of a Python step per item.
    ends = list(accumulate(map(_size, items)))
    room = limit - _ENVELOPE
    start, base = 0, 0
    while start < len(items):
        stop = bisect_right(ends, base + room, start + 1)
        yield items[start:stop]
        base = ends[stop - 1]
        start = stop


def batch_body(items: list[EncodedItem]) -> bytes:
    """``{"outputs":[...],"metrics":[...]}``: the batch extension's body, built from pre-encoded parts."""
    # List comprehensions: in 3.11 their specialized slot reads beat map(attrgetter).
    outputs = b",".join([i.output for i in items])
    metrics = [i.metrics for i in items]
    if metrics.count(None) == len(metrics):
        return b"".join((b'{"outputs":[', outputs, b"]}"))
    m = b",".join([b"null" if x is None else x for x in metrics])
    return b"".join((b'{"outputs":[', outputs, b'],"metrics":[', m, b"]}"))


def single_body(item: EncodedItem) -> bytes:
    """``{"output":...}``: one item per request, as the runpod protocol sends it."""
    if item.metrics is None:
        return b"".join((b'{"output":', item.output, b"}"))
    return b"".join((b'{"output":', item.output, b',"metrics":', item.metrics, b"}"))
