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
from dataclasses import dataclass
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
    "encode_item",
    "pack",
    "single_body",
    "split",
]

METRICS_RESERVE = 8 * 1024
# {"outputs":[ ... ],"metrics":[ ... ]} around one item, with generous slack.
_ENVELOPE = 64
MAX_ITEM_OUTPUT = MAX_STREAM_BYTES - METRICS_RESERVE - _ENVELOPE


@dataclass(frozen=True, slots=True)
class EncodedItem:
    """One stream item with its output already serialized, so sizes are exact and nothing is encoded twice."""

    output: bytes
    metrics: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.output) + (len(self.metrics) if self.metrics is not None else 4)  # 4: null


def _split_str(s: str, encoded_len: int, limit: int) -> Iterator[bytes]:
    """Split ``s`` into pieces whose JSON encodings are each <= limit, in order, covering every character."""
    pos, n = 0, len(s)
    # Start from the average encoded width so most pieces are right on the first try.
    width = max(1.0, (encoded_len - 2) / max(n, 1))
    while pos < n:
        take = min(n - pos, max(1, int((limit - 2) / width)))
        while True:
            piece = codec.dumps(s[pos : pos + take])
            if len(piece) <= limit:
                break
            # Too wide: shrink in proportion to the overshoot, never by less than one character.
            take = max(1, min(take - 1, int(take * (limit - 2) / (len(piece) - 2))))
        yield piece
        pos += take


def split(value: Any, limit: int = MAX_ITEM_OUTPUT) -> list[bytes]:
    """Serialize one yielded value into one or more item outputs of at most ``limit`` bytes each.

    Raises OutputNotSerializable for values orjson cannot encode and OutputTooLarge for a non-string over the
    limit.
    """
    data = codec.dumps(value)
    if len(data) <= limit:
        return [data]
    if isinstance(value, str):
        return list(_split_str(value, len(data), limit))
    raise OutputTooLarge(
        f"stream item is {len(data)} bytes serialized, over the {limit}-byte limit for one item; "
        "only strings are split automatically: yield smaller items"
    )


_RESERVED = ("stream_index", "scenario")


def encode_item(output: bytes, metrics: dict[str, Any] | None) -> EncodedItem:
    """Pair an output with its metrics. ``stream_index`` and ``scenario`` belong to the endpoint, which numbers
    the items as they land, so a handler's own values for them are dropped."""
    if not metrics:
        return EncodedItem(output)
    if any(k in metrics for k in _RESERVED):
        metrics = {k: v for k, v in metrics.items() if k not in _RESERVED}
    m = codec.dumps(metrics)
    if len(m) > METRICS_RESERVE:
        raise OutputTooLarge(f"stream item metrics are {len(m)} bytes serialized, over {METRICS_RESERVE}")
    return EncodedItem(output, m)


def pack(items: Iterable[EncodedItem], limit: int = MAX_STREAM_BYTES) -> Iterator[list[EncodedItem]]:
    """Group consecutive items into bodies of at most ``limit`` bytes (as built by ``batch_body``)."""
    group: list[EncodedItem] = []
    size = _ENVELOPE
    for item in items:
        cost = item.size + 2  # two commas
        if group and size + cost > limit:
            yield group
            group, size = [], _ENVELOPE
        group.append(item)
        size += cost
    if group:
        yield group


def batch_body(items: list[EncodedItem]) -> bytes:
    """``{"outputs":[...],"metrics":[...]}``: the batch extension's body, built from pre-encoded parts."""
    outputs = b",".join(i.output for i in items)
    if all(i.metrics is None for i in items):
        return b'{"outputs":[' + outputs + b"]}"
    metrics = b",".join(i.metrics if i.metrics is not None else b"null" for i in items)
    return b'{"outputs":[' + outputs + b'],"metrics":[' + metrics + b"]}"


def single_body(item: EncodedItem) -> bytes:
    """``{"output":...}``: one item per request, as the runpod protocol sends it."""
    if item.metrics is None:
        return b'{"output":' + item.output + b"}"
    return b'{"output":' + item.output + b',"metrics":' + item.metrics + b"}"
