"""The endpoint's record of one job, and how it reads on the wire."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ... import codec, trace
from ...models import JobStatus

__all__ = ["JobRecord", "Waiter", "wait_change", "wait_terminal"]


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Waiter:
    """Changes to one record from the moment the waiter was made (``with Waiter(r) as w: ... await w.wait(t)``).
    One future and one timer per wait that blocks: asyncio.timeout() around an Event cost twice as much per
    /runsync."""

    __slots__ = ("changed", "fut", "record")

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        self.changed = False
        self.fut: asyncio.Future[None] | None = None

    def __enter__(self) -> Waiter:
        r = self.record
        if r.waiters is None:
            r.waiters = [self]
        else:
            r.waiters.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        ws = self.record.waiters
        if ws is not None:
            ws.remove(self)
            if not ws:
                self.record.waiters = None

    def poke(self) -> None:
        self.changed = True
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(None)

    async def wait(self, timeout: float) -> bool:
        if not self.changed and timeout > 0:
            loop = asyncio.get_running_loop()
            fut = self.fut = loop.create_future()
            timer = loop.call_later(timeout, _wake, fut) if timeout != float("inf") else None
            try:
                await fut
            finally:
                self.fut = None
                if timer is not None:
                    timer.cancel()
        changed, self.changed = self.changed, False
        return changed


async def wait_terminal(r: JobRecord, timeout: float, jobs: Mapping[str, object]) -> None:
    """Wait up to ``timeout`` s for the job to end, or to leave ``jobs`` (purged, expired)."""
    if r.status.terminal or timeout <= 0 or jobs.get(r.id) is not r:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with Waiter(r) as w:
        left = timeout
        # Most waits are woken once, by the end: a wake that brought anything else waits on for the time left.
        while await w.wait(left) and not r.status.terminal and jobs.get(r.id) is r:
            left = deadline - loop.time()
            if left <= 0:
                return


async def wait_change(r: JobRecord, timeout: float) -> None:
    """Wait up to ``timeout`` s for anything to happen to the job (a stream item, progress, its end)."""
    with Waiter(r) as w:
        await w.wait(timeout)


@dataclass(slots=True, eq=False)
class JobRecord:
    id: str
    input: Any
    created: int
    sync: bool = False
    status: JobStatus = JobStatus.IN_QUEUE
    started: int | None = None
    ended: int | None = None
    # Serialized JSON: the final output, or the latest progress update while the job runs.
    output: bytes | None = None
    error: str | None = None
    error_details: dict[str, Any] | None = None
    retries: int = 0
    # The number of the job's latest lease (1 for its first run): stream items carry it as metrics.attempt.
    attempt: int = 0
    # Loaded from the journal at start-up: it may have run before the restart (a young lease is not journaled),
    # so its next lease is journaled before its handler runs.
    recovered: bool = False
    # Set by each lease: this lease is a re-run and must be on disk before the handler starts.
    rerun: bool = False
    worker_id: str | None = None
    webhook: str | None = None
    execution_timeout: int | None = None
    ttl: int | None = None
    # When /retry last queued the job again: its ttl counts from here (from ``created`` until then).
    requeued: int | None = None
    low_priority: bool = False
    retention: int = 0
    # The webhook events asked for besides the default (None: "completed" only, so the hot path checks one field).
    webhook_events: frozenset[str] | None = None
    # How many of its stream items "output" webhooks have carried so far.
    webhook_items: int = 0
    # (Idempotency-Key, request fingerprint) when submitted with one: journaled with the job, so it lives as long.
    idempotency: tuple[str, str] | None = None
    # The client's W3C traceparent header; None: the job's trace is derived from its id (see ``traceparent``).
    trace: str | None = None
    # Each stream item fully serialized:
    # {"output":...,"metrics":{...,"stream_index":i,"scenario":"stream","attempt":n}}.
    # A list from the first item on: most jobs never stream, and an empty list per record is one more object
    # for the garbage collector to scan while the record is retained.
    stream: list[bytes] | tuple[()] = ()
    cursor: int = 0
    # Everyone waiting on this job (runsync, status-sync, /stream, an OpenAI relay): the one way to wait.
    waiters: list[Waiter] | None = None
    # How many entries of the broker's retention queues point at this record (more than one after a /retry).
    retained_in: int = 0

    @property
    def ttl_due(self) -> int | None:
        return None if self.ttl is None else (self.created if self.requeued is None else self.requeued) + self.ttl

    @property
    def traceparent(self) -> str:
        return self.trace if self.trace is not None else trace.derived(self.id)

    @property
    def expires(self) -> int | None:
        return None if self.ended is None else self.ended + self.retention

    def notify(self) -> None:
        """Something changed (a stream item, progress, its end, its removal): wake every waiter."""
        if self.waiters is not None:
            for w in self.waiters:
                w.poke()

    def reply(self) -> dict[str, Any]:
        """The job reply of /status, /status-sync and a finished /runsync."""
        d: dict[str, Any] = {"id": self.id, "status": self.status._value_}
        if self.started is not None:
            d["delayTime"] = self.started - self.created
            if self.ended is not None:
                d["executionTime"] = self.ended - self.started
        if self.output is not None:
            d["output"] = codec.Fragment(self.output)
        if self.error is not None:
            d["error"] = self.error
            if self.error_details is not None:
                d["errorDetails"] = self.error_details
        if self.retries:
            d["retries"] = self.retries
        if self.worker_id is not None:
            d["workerId"] = self.worker_id
        return d

    def summary(self) -> dict[str, Any]:
        """One row of /requests."""
        d: dict[str, Any] = {"id": self.id, "status": self.status._value_, "createdAt": self.created}
        if self.started is not None:
            d["delayTime"] = self.started - self.created
            if self.ended is not None:
                d["executionTime"] = self.ended - self.started
        return d

    # --- persistence ---------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything but the input, output and stream, which the store keeps in their own columns. A field at its
        default is left out (``restore`` fills it back in): most jobs have no error, webhook, ttl or key, and the
        row, written once or twice a job and kept on disk for the whole retention, is then half the size."""
        # Each field tested in turn, not a dict of all of them filtered (which cost twice as much per job): the
        # numbers and flags are left out at 0 or False (falsy), the rest at None, in the same order as ever.
        d: dict[str, Any] = {"status": self.status._value_, "created": self.created, "retention": self.retention}
        if self.started:
            d["started"] = self.started
        if self.ended:
            d["ended"] = self.ended
        if self.error is not None:
            d["error"] = self.error
        if self.error_details is not None:
            d["error_details"] = self.error_details
        if self.retries:
            d["retries"] = self.retries
        if self.attempt:
            d["attempt"] = self.attempt
        if self.worker_id is not None:
            d["worker_id"] = self.worker_id
        self._rare_state(d)
        return d

    def _rare_state(self, d: dict[str, Any]) -> None:
        """The fields of ``state`` that most jobs leave at their default, in its order."""
        if self.webhook is not None:
            d["webhook"] = self.webhook
        if self.execution_timeout:
            d["execution_timeout"] = self.execution_timeout
        if self.ttl:
            d["ttl"] = self.ttl
        if self.requeued:
            d["requeued"] = self.requeued
        if self.low_priority:
            d["low_priority"] = self.low_priority
        if self.cursor:
            d["cursor"] = self.cursor
        if self.webhook_events is not None:
            d["webhook_events"] = sorted(self.webhook_events)
        if self.idempotency is not None:
            d["idempotency"] = self.idempotency
        if self.trace is not None:
            d["trace"] = self.trace

    @classmethod
    def restore(cls, job_id: str, input: Any, state: dict[str, Any], output: bytes | None) -> JobRecord:
        r = cls(job_id, input, state["created"])
        r.status = JobStatus(state["status"])
        # A missing field is at its default (see state()), as in rows journaled before some fields existed.
        r.retention = state.get("retention", 0)
        r.started = state.get("started")
        r.ended = state.get("ended")
        r.error = state.get("error")
        r.error_details = state.get("error_details")
        r.retries = state.get("retries", 0)
        r.worker_id = state.get("worker_id")
        r.webhook = state.get("webhook")
        r.execution_timeout = state.get("execution_timeout")
        r.ttl = state.get("ttl")
        r.low_priority = state.get("low_priority", False)
        r.cursor = state.get("cursor", 0)
        r.requeued = state.get("requeued")
        r.attempt = state.get("attempt", 0)
        if (events := state.get("webhook_events")) is not None:
            r.webhook_events = frozenset(events)
        if (key := state.get("idempotency")) is not None:
            r.idempotency = (key[0], key[1])
        r.trace = state.get("trace")
        r.output = output
        return r
