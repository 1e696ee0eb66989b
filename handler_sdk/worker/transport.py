"""What a worker needs from the endpoint, whichever way it reaches it (in-process or over HTTP)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..chunker import EncodedItem
from ..runner import Outcome

__all__ = ["Assignment", "Multiplexing", "Pipelining", "Pushing", "StreamSink", "Transport"]


@dataclass(slots=True)
class Assignment:
    """A job as a worker takes it: the raw take dict plus the parts the runtime reads."""

    id: str
    input: Any
    raw: dict[str, Any]
    timeout_s: float | None = None
    # Awaited before the handler runs, when the endpoint must first journal this attempt (a re-run).
    ready: Callable[[], Awaitable[None]] | None = None


class Transport(Protocol):
    worker_id: str
    # True when a stream request may carry several items ({"outputs": [...]}), as our endpoint announces.
    batch_stream: bool
    # True when stream/progress calls complete without I/O, so the worker calls them inline instead of batching.
    direct: bool
    # True when unfinished jobs can be handed back at a drain deadline instead of waiting for their lease.
    can_hand_back: bool

    async def take(self, n: int, busy: bool) -> list[Assignment]:
        """Up to ``n`` jobs; may hold an empty reply open for a while (long poll)."""
        ...

    async def stream(self, job_id: str, items: Sequence[EncodedItem]) -> None: ...

    async def progress(self, job_id: str, output: bytes) -> None: ...

    async def done(self, job_id: str, outcome: Outcome) -> None:
        """Report a result. Raises StaleResult when the endpoint refuses it (409), TransportError otherwise."""
        ...

    async def ping(self, job_ids: Sequence[str], initializing: bool) -> None: ...

    async def stops(self) -> list[str]:
        """Ids of jobs to stop; may hold an empty reply open for a while."""
        ...

    async def hand_back(self, job_ids: Sequence[str]) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class Pushing(Protocol):
    """A transport that hands jobs to the worker as they arrive (the endpoint is in this process), so the worker
    runs no take loop: it says how many jobs it would start now, and the transport starts them."""

    def attach(self, free: Callable[[], int], start: Callable[[list[Assignment]], None]) -> None: ...

    def detach(self) -> None: ...

    def slot_freed(self) -> None:
        """A job ended without a result to report (stopped): queued jobs may start. After a job with a result,
        done() offers the freed slot itself, once the result is recorded."""
        ...


class StreamSink(Protocol):
    """Where one job's stream items go: the worker's per-job ``StreamSender``, or a job's stream on a transport's
    multiplexer. ``emit`` returns None, or an awaitable when the handler must wait (for room, or for the item)."""

    job_id: str
    sent: int

    def emit(self, item: EncodedItem) -> Awaitable[None] | None: ...

    async def flush(self) -> None: ...

    def abort(self) -> None: ...


@runtime_checkable
class Multiplexing(Protocol):
    """A transport that sends every job's stream items together (the HTTP transport, once the endpoint announces
    stream-multi): the worker asks it for each streaming job's sink, and falls back to a StreamSender on None."""

    def open_stream(self, job_id: str, *, retries: int = 5, backoff_s: float = 0.2) -> StreamSink | None: ...


@runtime_checkable
class Pipelining(Protocol):
    """A transport that may have several takes in flight at once (the HTTP transport, once the endpoint announces
    take-pipeline): the worker fetches the next batch while the last one runs. 1 means one take at a time."""

    @property
    def takes_in_flight(self) -> int: ...
