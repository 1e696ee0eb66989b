"""The in-process worker's transports: the worker calls the serve process's job state without HTTP.

``InProcessTransport`` (the SQLite store) calls the broker with no I/O at all, and the broker pushes jobs to it as
they arrive. ``StateTransport`` (any store, used with Redis) goes through the state interface like a remote
worker: it takes jobs, and its lease is renewed by each of its calls and its pings, so a replica that dies has
its in-process worker's jobs lapse back to the queue after ``lease_ms``, as a dead remote worker's do."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence

from ..chunker import EncodedItem
from ..errors import Conflict, NotFound, StaleResult, StoreError, TransportError
from ..runner import Outcome
from ..worker.transport import Assignment
from .state.api import JobState, Lease, lease_payload
from .state.broker import Broker
from .state.journal import keeps
from .state.record import JobRecord

__all__ = ["InProcessTransport", "StateTransport"]

log = logging.getLogger(__name__)
# While the store cannot write, a re-run waits this long between tries to journal its attempt.
_JOURNAL_RETRY_S = 1.0


class InProcessTransport:
    batch_stream = True
    direct = True
    can_hand_back = True

    def __init__(self, broker: Broker, worker_id: str = "local", *, hold_s: float = 5.0) -> None:
        self.broker = broker
        self.worker_id = worker_id
        self.hold_s = hold_s
        broker.seen(worker_id, local=True, initializing=True)
        self._free: Callable[[], int] | None = None
        self._start: Callable[[list[Assignment]], None] | None = None

    async def take(self, n: int, busy: bool) -> list[Assignment]:
        return [_assignment(r) for r in await self.broker.take(self.worker_id, n, self.hold_s, local=True)]

    # --- Pushing: the broker hands jobs over as they are submitted (no take round trip) ----------------------

    def attach(self, free: Callable[[], int], start: Callable[[list[Assignment]], None]) -> None:
        self._free, self._start = free, start
        self.broker.attach_local(self)

    def detach(self) -> None:
        self.broker.detach_local(self)
        self._free = self._start = None

    def slot_freed(self) -> None:
        self.broker.dispatch()

    def free(self) -> int:
        return 0 if self._free is None else self._free()

    def start(self, records: list[JobRecord]) -> None:
        assert self._start is not None
        assignments = []
        for r in records:
            a = _assignment(r)
            if r.rerun:
                a.ready = self._journaled
            assignments.append(a)
        self._start(assignments)

    async def _journaled(self) -> None:
        """Wait until the store holds this re-run's attempt (see Broker._lease), through a full disk if need be."""
        while True:
            try:
                await self.broker.durable()
                return
            except StoreError as e:
                log.warning("a re-run waits for the job store: %s", e)
                await asyncio.sleep(_JOURNAL_RETRY_S)

    async def stream(self, job_id: str, items: Sequence[EncodedItem]) -> None:
        try:
            self.broker.stream(self.worker_id, job_id, [i.output for i in items], [i.metrics for i in items])
        except (Conflict, NotFound) as e:
            raise StaleResult(str(e)) from e

    async def progress(self, job_id: str, output: bytes) -> None:
        try:
            self.broker.progress(self.worker_id, job_id, output)
        except (Conflict, NotFound) as e:
            raise StaleResult(str(e)) from e

    async def done(self, job_id: str, outcome: Outcome) -> None:
        # The worker leaves its freed slot to this call (Pushing.slot_freed): Broker.done offers it.
        try:
            r = self.broker.done(
                self.worker_id, job_id, outcome.status, output=outcome.output, error=outcome.error,
                details=outcome.error_details,
            )  # fmt: skip
        except (Conflict, NotFound) as e:
            raise StaleResult(str(e)) from e
        if keeps(r):
            try:
                await self.broker.durable()
            except StoreError as e:
                # The result is recorded here and stays queued for the journal, which retries until the disk
                # takes it: the worker goes on (it has nothing it could do better with the result).
                log.warning("result of job %s recorded, not yet journaled: %s", job_id, e)

    async def ping(self, job_ids: Sequence[str], initializing: bool) -> None:
        self.broker.ping(self.worker_id, job_ids, initializing=initializing)

    async def stops(self) -> list[str]:
        # Never an unheld poll: the worker re-asks a direct transport at once, so a hold of 0 (serve --hold-s 0,
        # meant for remote takers) would spin the event loop and starve every request.
        return await self.broker.stops(self.worker_id, max(self.hold_s, 1.0), local=True)

    async def hand_back(self, job_ids: Sequence[str]) -> None:
        self.broker.hand_back(self.worker_id, job_ids)

    async def close(self) -> None:
        if self._start is not None:
            self.detach()
        self.broker.workers.pop(self.worker_id, None)


def _assignment(r: JobRecord) -> Assignment:
    timeout_s = None if r.execution_timeout is None else r.execution_timeout / 1000
    return Assignment(r.id, r.input, {"id": r.id, "input": r.input, "traceparent": r.traceparent}, timeout_s)


class StateTransport:
    """The in-process worker of a replica on a shared store: a remote worker's protocol, minus HTTP."""

    batch_stream = True
    direct = False
    can_hand_back = True

    def __init__(self, state: JobState, worker_id: str, *, hold_s: float = 5.0) -> None:
        self.state = state
        self.worker_id = worker_id
        self.hold_s = max(hold_s, 1.0)  # never an unheld poll (see InProcessTransport.stops)

    async def take(self, n: int, busy: bool) -> list[Assignment]:
        with _as_transport_errors():
            leases = await self.state.take(self.worker_id, n, self.hold_s, busy=busy)
        return [_lease_assignment(x) for x in leases]

    async def stream(self, job_id: str, items: Sequence[EncodedItem]) -> None:
        with _as_transport_errors():
            await self.state.stream(self.worker_id, job_id, [i.output for i in items], [i.metrics for i in items])

    async def progress(self, job_id: str, output: bytes) -> None:
        with _as_transport_errors():
            await self.state.progress(self.worker_id, job_id, output)

    async def done(self, job_id: str, outcome: Outcome) -> None:
        # A TransportError keeps the result with the worker, which sends it again.
        with _as_transport_errors():
            await self.state.done(
                self.worker_id, job_id, outcome.status, output=outcome.output, error=outcome.error,
                details=outcome.error_details,
            )  # fmt: skip

    async def ping(self, job_ids: Sequence[str], initializing: bool) -> None:
        with _as_transport_errors():
            await self.state.ping(self.worker_id, job_ids, initializing=initializing)

    async def stops(self) -> list[str]:
        with _as_transport_errors():
            return await self.state.stops(self.worker_id, self.hold_s)

    async def hand_back(self, job_ids: Sequence[str]) -> None:
        with _as_transport_errors():
            await self.state.hand_back(self.worker_id, job_ids)

    async def close(self) -> None:
        return None  # its lease lapses, or the next process of this replica id takes over


@contextlib.contextmanager
def _as_transport_errors() -> Iterator[None]:
    """The store's answers as a remote worker's transport gives them: a refused result is stale, an unreachable
    store is a transport failure (the worker backs off and retries, as it does when its endpoint is down)."""
    try:
        yield
    except (Conflict, NotFound) as e:
        raise StaleResult(str(e)) from e
    except StoreError as e:
        raise TransportError(str(e)) from e


def _lease_assignment(x: Lease) -> Assignment:
    timeout_s = None if x.execution_timeout is None else x.execution_timeout / 1000
    return Assignment(x.id, x.input, lease_payload(x), timeout_s)
