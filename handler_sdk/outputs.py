"""Values a generator handler may yield besides plain outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Chunk", "Final"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """Yield this instead of a bare value to attach metrics to a stream item (e.g. token throughput).

    The endpoint adds ``stream_index`` and ``scenario`` to the metrics."""

    output: Any
    metrics: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Final:
    """Yield this to set a generator job's final output (what /status shows once it completes) and end the
    stream. Without it a generator job has no output, or the list of its items with ``aggregate_stream``."""

    output: Any
