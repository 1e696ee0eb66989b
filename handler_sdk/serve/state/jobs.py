"""Every retained job by id (a finished one in its compact form, ``finished.py``), how many are in each status,
and the transitions that change a record.

A status changes only here, checked against ``lifecycle.py``, with the per-status counts (/health's) changed in the
same step. What a transition sets off (journaling, waking waiters, hooks, the next job's dispatch) is the
broker's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ... import lifecycle
from ...chunker import scrub_metrics
from ...errors import Conflict, NotFound
from ...models import JobStatus, RunRequest
from .finished import Finished
from .record import JobRecord

__all__ = ["JobTable", "new_record"]

S = JobStatus

# What /retry changes on a record, so that a retry the journal refused can be undone field by field.
_RETRY_RESETS = (
    "status", "retries", "started", "ended", "output", "error", "error_details", "worker_id", "stream", "cursor",
    "webhook_items", "requeued",
)  # fmt: skip


def new_record(req: RunRequest, job_id: str, now: int, *, sync: bool, retention: int, trace: str | None) -> JobRecord:
    p = req.policy
    r = JobRecord(
        job_id, req.input, now, sync=sync, webhook=req.webhook, execution_timeout=p.execution_timeout, ttl=p.ttl,
        low_priority=p.low_priority, retention=retention, trace=trace,
    )  # fmt: skip
    # None unless asked for besides "completed", so the hot path checks one field.
    if req.webhook_events is not None and set(req.webhook_events) != {"completed"}:
        r.webhook_events = frozenset(req.webhook_events)
    return r


class JobTable:
    __slots__ = ("counts", "records")

    def __init__(self) -> None:
        # Finished jobs in their compact form (finished.py); get() for a JobRecord.
        self.records: dict[str, JobRecord | Finished] = {}
        self.counts: dict[JobStatus, int] = dict.fromkeys(JobStatus, 0)

    def add(self, r: JobRecord) -> None:
        self.records[r.id] = r
        self.counts[r.status] += 1

    def remove(self, r: JobRecord) -> bool:
        """Forget ``r`` (purged, expired, or a submit the journal refused); False if it was gone already."""
        if self.records.get(r.id) is not r:
            return False
        del self.records[r.id]
        self.counts[r.status] -= 1
        return True

    def drop(self, job_id: str, v: JobRecord | Finished) -> bool:
        """``remove`` by id, for a record that may be in its compact form (which has no ``id``)."""
        if self.records.get(job_id) is not v:
            return False
        del self.records[job_id]
        self.counts[v.status] -= 1
        return True

    def get(self, job_id: str) -> JobRecord:
        """The job's record (a finished one's is a copy: ``Retained.thaw`` or ``reopen`` first to change it)."""
        r = self.records.get(job_id)
        if r is None:
            raise NotFound(f"job {job_id} not found (unknown, purged, or past its retention)")
        return r if isinstance(r, JobRecord) else r.thaw(job_id)

    def leased(self, worker_id: str, job_id: str) -> JobRecord:
        """The job, if it is in progress under this worker's lease: a result from anyone else is refused."""
        r = self.records.get(job_id)
        if type(r) is not JobRecord:
            r = self.get(job_id)  # (NotFound, or a finished one's copy: refused below)
        if r.status is not S.IN_PROGRESS or r.worker_id != worker_id:
            raise Conflict(f"job {job_id} is {r.status} and not leased to worker {worker_id}; result ignored")
        return r

    def held(self, worker_id: str, job_ids: Iterable[str]) -> list[JobRecord]:
        """Those of these jobs (each once) that are in progress under this worker's lease."""
        rs = (self.records.get(j) for j in dict.fromkeys(job_ids))
        return [r for r in rs if isinstance(r, JobRecord) and r.status is S.IN_PROGRESS and r.worker_id == worker_id]

    # --- transitions ---------------------------------------------------------------------------------------

    def move(self, r: JobRecord, new: JobStatus) -> None:
        if new not in lifecycle.TRANSITIONS[r.status]:
            lifecycle.check(r.status, new)  # (raises, naming both)
        self.counts[r.status] -= 1
        self.counts[new] += 1
        r.status = new

    def lease(self, r: JobRecord, worker_id: str, now: int) -> None:
        self.move(r, S.IN_PROGRESS)
        r.started, r.worker_id = now, worker_id
        r.attempt += 1

    @staticmethod
    def lost(r: JobRecord, max_attempts: int) -> str | None:
        """Count a lost lease against the job: None if it may run again, else why it fails."""
        r.retries += 1
        if r.retries >= max_attempts:
            return (
                f"job was lost with its worker {r.retries} times (max_attempts={max_attempts}): "
                "the worker died, was killed, or lost its lease while running it"
            )
        if r.stream and isinstance(r.input, dict) and "openai_route" in r.input:
            # Its client already holds part of an SSE answer: a re-run would send a second answer after it.
            return "the worker was lost while streaming this answer; the partial answer cannot be resumed"
        return None

    def unlease(self, r: JobRecord) -> None:
        """An in-progress job goes back to the queue without its lease (lost worker, hand-back, restart)."""
        self.move(r, S.IN_QUEUE)
        # The stream stays: its items were read by clients already. The next attempt's items follow them, with
        # stream_index counting on and metrics.attempt telling the attempts apart.
        r.worker_id, r.started, r.output = None, None, None

    def finish(
        self,
        r: JobRecord,
        status: JobStatus,
        now: int,
        *,
        output: bytes | None,
        error: str | None,
        details: dict[str, Any] | None,
    ) -> None:
        self.move(r, status)
        r.ended = now
        r.output, r.error, r.error_details = output, error, details
        if status in (S.COMPLETED, S.CANCELLED):
            # Only /retry (of FAILED or TIMED_OUT) reads it again (the journal has its own copy of a /run job's);
            # finished records pile up for their retention, and the collector scans every dict they hold.
            r.input = None

    @staticmethod
    def retryable(r: JobRecord) -> None:
        """Conflict unless the job may be retried (checked before a finished record is unpacked for it)."""
        if r.status not in (S.FAILED, S.TIMED_OUT):
            raise Conflict(f"job {r.id} is {r.status}; only FAILED or TIMED_OUT jobs can be retried")

    def retry(self, r: JobRecord, now: int) -> None:
        """A failed or timed-out job queues again, as if submitted ``now``, with a fresh stream."""
        self.retryable(r)
        self.move(r, S.IN_QUEUE)
        r.retries += 1
        r.started = r.ended = r.output = r.error = r.error_details = r.worker_id = None
        r.stream, r.cursor = (), 0
        r.webhook_items = 0  # a fresh stream for its "output" webhooks too
        # Queued again by the client, as if submitted now: a ttl that ran out (or would have) starts over.
        r.requeued = now

    def undo_retry(self, r: JobRecord, before: JobRecord) -> None:
        """Put a retried job back as it was (``before``: a copy taken before ``retry``)."""
        self.counts[r.status] -= 1
        self.counts[before.status] += 1
        for name in _RETRY_RESETS:
            setattr(r, name, getattr(before, name))

    @staticmethod
    def append_stream(r: JobRecord, outputs: Sequence[bytes], metrics: Sequence[bytes | None]) -> int:
        """Append stream items in order (outputs and metrics serialized); returns the index of the first."""
        stream = r.stream if isinstance(r.stream, list) else []
        r.stream = stream
        first = len(stream)
        for out, m in zip(outputs, metrics, strict=True):
            # Splice our two fields into the serialized metrics rather than decode and re-encode them.
            tail = b'"stream_index":%d,"scenario":"stream","attempt":%d}}' % (len(stream), r.attempt)
            m = scrub_metrics(m)  # noqa: PLW2901 (a remote worker's values for our keys: dropped, not doubled)
            if m is None or m == b"{}":
                stream.append(b'{"output":' + out + b',"metrics":{' + tail)
            else:
                stream.append(b'{"output":' + out + b',"metrics":' + m[:-1] + b"," + tail)
        return first
