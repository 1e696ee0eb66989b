"""Values a handler may return or yield besides plain JSON: Chunk, Final and File."""

from __future__ import annotations

import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Chunk", "File", "Final"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """Yield this instead of a bare value to attach metrics to a stream item (e.g. token throughput).

    The endpoint adds ``stream_index``, ``scenario`` and ``attempt`` to the metrics."""

    output: Any
    metrics: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Final:
    """Yield this to set a generator job's final output (what /status shows once it completes) and end the
    stream. Without it a generator job has no output, or the list of its items with ``aggregate_stream``."""

    output: Any


@dataclass(frozen=True, slots=True, init=False)
class File:
    """A file in an output: return it, put it anywhere in a returned dict or list, or yield it as a stream item.

    ``File("out.png")`` (a path) or ``File(png_bytes, content_type="image/png")``. With a bucket configured
    (``BUCKET_ENDPOINT_URL``, ``BUCKET_ACCESS_KEY_ID``, ``BUCKET_SECRET_ACCESS_KEY``) it is uploaded and becomes
    ``{"url": presigned GET URL, "content_type", "size"}``; without one it is inlined as ``{"content_type",
    "data_base64"}`` if that fits the output's limit (20 MiB for a result, 1 MiB for a stream item), and the job
    fails naming ``BUCKET_ENDPOINT_URL`` if it does not. ``content_type`` defaults to a guess from the name.
    A path is read when the output is sent, after the handler returns: don't delete it first.
    """

    source: Path | bytes
    content_type: str
    name: str

    def __init__(
        self, source: str | os.PathLike[str] | bytes, content_type: str | None = None, name: str | None = None
    ):
        if isinstance(source, bytes | bytearray | memoryview):
            src: Path | bytes = bytes(source)
            default_name = "file"
        elif isinstance(source, str | os.PathLike):
            src = Path(source)
            default_name = src.name or "file"
        else:
            raise TypeError(f"File() takes a path or bytes, not {type(source).__name__}")
        name = name or default_name
        ctype = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        object.__setattr__(self, "source", src)
        object.__setattr__(self, "content_type", ctype)
        object.__setattr__(self, "name", name)

    def size(self) -> int:
        """Its size in bytes (a path is stat'ed: FileNotFoundError if it is gone)."""
        return len(self.source) if isinstance(self.source, bytes) else self.source.stat().st_size

    def read(self) -> bytes:
        return self.source if isinstance(self.source, bytes) else self.source.read_bytes()

    def __repr__(self) -> str:
        what = f"{len(self.source)} bytes" if isinstance(self.source, bytes) else str(self.source)
        return f"File({what}, content_type={self.content_type!r})"
