"""The seam between the endpoint's HTTP routes and its job state: one interface, two engines.

``LocalState`` (``local.py``, the default ``--store sqlite``) keeps every job in this process's memory with a
SQLite journal; ``RedisState`` (``redis_state.py``, ``--store redis://...``) keeps them in Redis, shared by any
number of serve replicas. The routes (``serve/http/``) and the serve-side worker adapters call only what is
declared here, so neither knows which engine answers. Every method is a coroutine: a Redis engine does a round
trip where the local one returns at once.

What the interface promises, whichever engine:

* a /run job is durable (journaled, or written to Redis) before ``submit`` returns, and a result before ``done``
  returns (unless ``durable=False``, for a batch that calls ``flush`` once);
* a waiter (``wait_terminal``, ``watch``) is woken by a change made anywhere (this process or another replica),
  and costs nothing while it waits;
* ``NotFound`` for an unknown job, ``Conflict`` for a result from a worker that no longer holds the job's lease,
  ``StoreError`` when the engine cannot take a write (answered 503).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from ...errors import HTTPError
from ...models import JobStatus, RunRequest

__all__ = ["JobState", "JobView", "Lease", "Leased", "Watch", "lease_payload"]


class JobView(Protocol):
    """What a route reads of one job, as the engine recorded it when it was read."""

    @property
    def id(self) -> str: ...
    @property
    def status(self) -> JobStatus: ...
    @property
    def sync(self) -> bool: ...
    @property
    def created(self) -> int: ...
    @property
    def started(self) -> int | None: ...
    @property
    def ended(self) -> int | None: ...
    @property
    def output(self) -> bytes | None: ...
    @property
    def error(self) -> str | None: ...

    def reply(self) -> dict[str, Any]:
        """The job reply of /status, /status-sync and a finished /runsync."""
        ...


class Lease(Protocol):
    """A job leased to a worker by a take: what the worker is sent. The local engine answers a take with the job
    records themselves (which have these fields: a lease object per job was a fiftieth of a drain's serve time),
    the Redis engine with ``Leased``. Read at once: a record changes as its job goes on."""

    @property
    def id(self) -> str: ...
    @property
    def input(self) -> Any: ...
    @property
    def traceparent(self) -> str: ...
    @property
    def execution_timeout(self) -> int | None: ...
    @property
    def rerun(self) -> bool:
        """This lease is a re-run that must be journaled before its handler starts (see Broker._lease)."""
        ...


@dataclass(slots=True)
class Leased:
    """A lease as its own object (what a take answers when the job's record lives elsewhere, in Redis)."""

    id: str
    input: Any
    traceparent: str
    execution_timeout: int | None = None
    rerun: bool = False


def lease_payload(x: Lease) -> dict[str, Any]:
    """The job as job-take sends it."""
    d: dict[str, Any] = {"id": x.id, "input": x.input, "traceparent": x.traceparent}
    if x.execution_timeout is not None:
        d["policy"] = {"executionTimeout": x.execution_timeout}
    return d


class Watch(Protocol):
    """Changes to one job from the moment the watch was made: made before a read, it misses nothing after it."""

    async def wait(self, timeout: float) -> bool:
        """Until the job changed since the watch was made (or since the last wait returned True), or ``timeout``
        s pass; whether it changed."""
        ...

    def __enter__(self) -> Watch: ...

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None: ...


class JobState(Protocol):
    """One endpoint's jobs: the queue, the records, the leases, the stream items, the deadlines, the counters."""

    # "sqlite" or "redis": for logs and the dashboard.
    kind: str

    # Called with each job this process finished (its own workers' results, cancels, its deadlines): webhooks,
    # /metrics and the dashboard's history hang here. ``on_event`` carries ("start" | "progress" | "output", job).
    @property
    def on_terminal(self) -> list[Callable[[Any], None]]: ...
    @property
    def on_event(self) -> list[Callable[[str, Any], None]]: ...

    # Per-process counters for /metrics and the dashboard.
    @property
    def submitted(self) -> dict[str, int]: ...
    @property
    def stream_items(self) -> int: ...
    @property
    def stream_bytes(self) -> int: ...

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def run_clock(self) -> None:
        """Apply deadlines and lapse silent workers' leases, until cancelled."""
        ...

    def stop(self) -> None:
        """The background loops (``run_clock``, webhook delivery) end at their next turn."""
        ...

    def now(self) -> int:
        """The engine's clock, in ms."""
        ...

    # --- client side ---------------------------------------------------------------------------------------

    async def submit(
        self,
        req: RunRequest,
        *,
        sync: bool = False,
        key: str | None = None,
        route: str | None = None,
        trace: str | None = None,
    ) -> tuple[JobView, bool]:
        """A new job, or the one its Idempotency-Key already names (True). A /run job is durable on return."""
        ...

    async def runsync(
        self, req: RunRequest, *, key: str | None, trace: str | None, timeout: float
    ) -> tuple[JobView, bool]:
        """A new /runsync job (or the one its key names), waited for up to ``timeout`` s."""
        ...

    async def wait_terminal(self, job: JobView, timeout: float) -> JobView:
        """The job once it ended (or was purged), or as it is after ``timeout`` s."""
        ...

    def watch(self, job_id: str) -> Watch: ...

    async def status(self, job_id: str, ttl: int | None = None) -> JobView:
        """The job; a ``ttl`` below its retention shortens the retention."""
        ...

    async def read_stream(self, job_id: str, start: int | None = None) -> tuple[JobView, Sequence[bytes]]:
        """Its stream items from ``start``, or, without one, those no /stream has returned yet (the cursor moves)."""
        ...

    async def input_of(self, job_id: str) -> Any: ...
    async def cancel(self, job_id: str) -> JobView: ...
    async def retry(self, job_id: str) -> JobView:
        """FAILED or TIMED_OUT: queued again, durable on return; Conflict otherwise."""
        ...

    async def purge(self) -> int: ...
    async def health(self) -> dict[str, Any]: ...
    async def requests(self, limit: int, offset: int, status: JobStatus | None = None) -> dict[str, Any]: ...
    async def workers(self) -> list[dict[str, Any]]:
        """The workers attached (id, state, jobs, lastPing), for the dashboard."""
        ...

    async def recent(self, n: int) -> list[dict[str, Any]]:
        """The newest ``n`` jobs as /requests lists them (with their error, where the engine has it at hand)."""
        ...

    async def flush(self) -> None:
        """Until every change so far is durable."""
        ...

    # --- worker side ---------------------------------------------------------------------------------------

    async def take(
        self, worker_id: str, n: int, wait: float, *, gone: Callable[[], bool] | None = None, busy: bool | None = None
    ) -> Sequence[Lease]: ...

    async def stream(
        self, worker_id: str, job_id: str, outputs: Sequence[bytes], metrics: Sequence[bytes | None]
    ) -> int: ...

    async def progress(self, worker_id: str, job_id: str, output: bytes) -> None: ...

    async def done(
        self,
        worker_id: str,
        job_id: str,
        status: JobStatus,
        *,
        output: bytes | None = None,
        error: str | None = None,
        details: dict[str, Any] | None = None,
        durable: bool = True,
    ) -> None: ...

    async def completed_many(
        self, worker_id: str, results: Sequence[tuple[str, bytes | None]]
    ) -> list[HTTPError | None]:
        """Plain successes, ``(job id, serialized output)`` each, recorded as ``done(..., COMPLETED,
        durable=False)`` records each: per result, None or why it was refused (a job-done-batch's answers)."""
        ...

    async def ping(self, worker_id: str, job_ids: Sequence[str] = (), *, initializing: bool = False) -> None: ...
    async def stops(self, worker_id: str, wait: float = 0.0) -> list[str]: ...
    async def hand_back(self, worker_id: str, job_ids: Sequence[str]) -> int: ...
    async def leave(self, worker_id: str) -> None: ...
