"""The journal's changes waiting for the next commit, coalesced per job, and taken out as one batch.

The broker queues every change here on the event loop; the store's writer (``store.py``) takes whatever queued up
while its previous commit ran as one batch, built on the loop so it sees one consistent moment, and puts it back
if the commit fails (under whatever was queued since, which is newer). A job's latest state is what gets written.
Nothing here touches SQLite.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

from ... import codec
from ...models import JobStatus, make_error_details
from .record import JobRecord

__all__ = ["DELETED", "Batch", "Pending", "Taken"]

log = logging.getLogger(__name__)


class _Deleted:
    """What ``pending`` answers for a job whose delete is queued."""


DELETED = _Deleted()

# One commit's worth of work, built on the event loop so it sees one consistent moment.
Batch = tuple[
    list[tuple[str, bytes, bytes, bytes | None, str, str, int | None, str | None]],  # inserts
    # Updates: (state, output, status, id) of the jobs with an expiry (finished: the row keeps the expiry it has),
    # and of those without (running, or queued again: the row loses any expiry).
    list[tuple[bytes, bytes | None, str, str]],
    list[tuple[bytes, bytes | None, str, str]],
    list[tuple[str, int, bytes]],  # stream items
    list[str],  # deletes
    list[str],  # stream resets
    list[tuple[str, bytes]],  # meta
    int | None,  # sweep: delete the rows that expired by then
    list[tuple[int, str]],  # expiries of finished jobs that live here only
]


class Pending:
    def __init__(self, linger_s: float, endpoint_id: str) -> None:
        self.linger_s = linger_s
        self.endpoint_id = endpoint_id
        # Inserted jobs with their input already encoded: an input that cannot be written fails its insert.
        self._new: dict[str, tuple[JobRecord, bytes]] = {}
        self._dirty: dict[str, JobRecord] = {}
        # When each dirty job was first queued (time.monotonic()): a young lease waits for its result.
        self._since: dict[str, float] = {}
        self._stream: list[tuple[str, int, bytes]] = []
        self._deleted: set[str] = set()
        self._reset: set[str] = set()
        self._meta: dict[str, Any] = {}
        # Finished /runsync jobs leaving memory, to be written (they have no row yet).
        self._archived: dict[str, JobRecord] = {}
        # When a finished job that left memory expires: its row gets it (and so an entry in the expires index).
        self._expiring: dict[str, int] = {}
        self._sweep: int | None = None
        # Set by every change: the writer has something to commit.
        self._wake = asyncio.Event()
        # Whether _wake is set, kept beside it (the writer clears both): a change while it is set already costs no
        # call of Event.set, which every change to a job made (two or three a job).
        self._woken = False
        self._closing = False

    def pending(self, job_id: str) -> JobRecord | _Deleted | None:
        """A change to this job queued and not yet committed: the record to be written, DELETED, or None."""
        if job_id in self._deleted:
            return DELETED
        if (new := self._new.get(job_id)) is not None:
            return new[0]
        return self._dirty.get(job_id) or self._archived.get(job_id)

    def pending_key(self, key: str) -> JobRecord | None:
        """A job with this Idempotency-Key whose row is not written yet (new, or a /runsync job leaving memory)."""
        for r in (*(n[0] for n in self._new.values()), *self._archived.values()):
            if r.idempotency is not None and r.idempotency[0] == key and r.id not in self._deleted:
                return r
        return None

    # --- queueing changes (all called on the loop) ---------------------------------------------------------

    def insert(self, r: JobRecord) -> None:
        """Queue a new job; raises OutputNotSerializable (nothing queued) when its input cannot be written."""
        self._new[r.id] = (r, codec.dumps(r.input))
        self._deleted.discard(r.id)
        if not self._woken:
            self._woken = True
            self._wake.set()

    def update(self, r: JobRecord, *, now: bool = False) -> None:
        """Queue a job's new state. ``now``: write it at the next commit even if it is a young lease (a re-run's
        lease, which must be on disk before its handler runs)."""
        if (new := self._new.get(r.id)) is not None:
            if new[0] is not r:  # a finished record thawed from its compact form is a new object
                self._new[r.id] = (r, new[1])
        else:
            if r.id not in self._dirty or now:
                self._since[r.id] = 0.0 if now else time.monotonic()
            self._dirty[r.id] = r
        if not self._woken:
            self._woken = True
            self._wake.set()

    def add_stream(self, job_id: str, index: int, item: bytes) -> None:
        self._stream.append((job_id, index, item))
        if job_id in self._since:
            # Its lease goes with them: items journaled without the attempt they belong to would, after a crash,
            # be followed by a re-run numbered as the same attempt.
            self._since[job_id] = 0.0
        self._wake.set()

    def reset_stream(self, job_id: str) -> None:
        """Drop a job's journaled stream items (a retried job starts a fresh stream)."""
        self._stream = [s for s in self._stream if s[0] != job_id]
        self._reset.add(job_id)
        self._wake.set()

    def archive(self, r: JobRecord) -> None:
        """Write a finished /runsync job, which has no row, as it leaves memory."""
        self._archived[r.id] = r
        self._deleted.discard(r.id)
        self._wake.set()

    def rewrite(self, r: JobRecord) -> None:
        """Write a job that lives only here again (read back with ``read``, then changed)."""
        if r.id in self._archived:
            self._archived[r.id] = r
        else:
            self.update(r, now=True)
            if r.expires is not None:
                self.expire_at(r.id, r.expires)

    def expire_at(self, job_id: str, when: int) -> None:
        """A finished /run job leaves memory: its row expires at ``when`` (the sweep deletes it then). Rows of jobs
        in memory carry no expiry: the broker deletes them as they expire, and the index stays off the hot path."""
        self._expiring[job_id] = when
        self._wake.set()

    def sweep(self, now: int) -> None:
        """Delete, at the next commit, the rows whose retention ended by ``now`` (through the expires index)."""
        self._sweep = now
        self._wake.set()

    def delete(self, ids: Sequence[str]) -> None:
        for i in ids:
            self._new.pop(i, None)
            self._archived.pop(i, None)
            self._expiring.pop(i, None)
            self._dirty.pop(i, None)
            self._since.pop(i, None)
            self._deleted.add(i)
        self._wake.set()

    def set_meta(self, key: str, value: Any) -> None:
        self._meta[f"{self.endpoint_id}:{key}"] = value
        self._wake.set()

    # --- the batch -----------------------------------------------------------------------------------------

    def _due(self) -> dict[str, JobRecord]:
        """The dirty jobs to write now. Leases queued less than ``linger_s`` ago stay queued (unless closing): a
        no-op job's lease and result, a few milliseconds apart, are then one row write instead of two. A lease
        with stream items queued is written with them (``add_stream``)."""
        dirty, self._dirty, since, self._since = self._dirty, {}, self._since, {}
        if self._closing or self.linger_s <= 0:
            return dirty
        cutoff = time.monotonic() - self.linger_s
        for job_id, r in dirty.items():
            if r.status is JobStatus.IN_PROGRESS and since[job_id] > cutoff:
                self._dirty[job_id] = r
                self._since[job_id] = since[job_id]
        if self._dirty:
            self._wake.set()  # come back for them: at the next flush, or after lingering
            for job_id in self._dirty:
                del dirty[job_id]
        return dirty

    def take_batch(self) -> tuple[Batch, Taken] | None:
        dirty = self._due()
        work = (
            self._new or dirty or self._stream or self._deleted or self._meta or self._reset or self._archived
            or self._expiring
        )  # fmt: skip
        if not work and self._sweep is None:
            return None
        ep = self.endpoint_id
        inserts = [
            (r.id, inp, _state(r), r.output, ep, r.status.value, r.expires, _key(r)) for r, inp in self._new.values()
        ]
        for r in self._archived.values():
            inserts.append((r.id, _input(r), _state(r), r.output, ep, r.status.value, r.expires, _key(r)))
        ended: list[tuple[bytes, bytes | None, str, str]] = []
        running: list[tuple[bytes, bytes | None, str, str]] = []
        for r in dirty.values():
            (running if r.ended is None else ended).append((_state(r), r.output, r.status._value_, r.id))
        expiring = [(when, job_id) for job_id, when in self._expiring.items() if job_id not in self._deleted]
        deleted = self._deleted
        stream = [s for s in self._stream if s[0] not in deleted]
        meta = [(k, codec.dumps(v)) for k, v in self._meta.items()]
        taken = Taken(
            self._new, dirty, self._stream, self._deleted, self._reset, self._meta, self._archived, self._sweep,
            self._expiring,
        )  # fmt: skip
        self._new, self._stream, self._meta, self._archived, sweep, self._sweep = {}, [], {}, {}, self._sweep, None
        self._expiring = {}
        resets = [i for i in self._reset if i not in self._deleted]
        deletes = list(self._deleted)
        self._reset, self._deleted = set(), set()
        return (inserts, ended, running, stream, deletes, resets, meta, sweep, expiring), taken

    def put_back(self, taken: Taken) -> None:
        """A failed commit's changes queued again, under whatever was queued since (which is newer)."""
        for job_id, (r, inp) in taken.new.items():
            if job_id not in taken.deleted and job_id not in self._deleted:
                self._new.setdefault(job_id, (r, inp))
        for job_id, r in taken.dirty.items():
            if job_id not in self._deleted and job_id not in self._new:
                self._dirty.setdefault(job_id, r)
                self._since.setdefault(job_id, 0.0)
        self._stream = [s for s in taken.stream if s[0] not in self._reset and s[0] not in self._deleted] + self._stream
        self._deleted |= taken.deleted
        self._reset |= {i for i in taken.reset if i not in taken.deleted}
        self._meta = {**taken.meta, **self._meta}
        for job_id, r in taken.archived.items():
            if job_id not in self._deleted:
                self._archived.setdefault(job_id, r)
        if taken.sweep is not None and self._sweep is None:
            self._sweep = taken.sweep
        for job_id, when in taken.expiring.items():
            if job_id not in self._deleted:
                self._expiring.setdefault(job_id, when)


@dataclasses.dataclass(slots=True)
class Taken:
    """What a batch took from the queues, to put back if its commit fails."""

    new: dict[str, tuple[JobRecord, bytes]]
    dirty: dict[str, JobRecord]
    stream: list[tuple[str, int, bytes]]
    deleted: set[str]
    reset: set[str]
    meta: dict[str, Any]
    archived: dict[str, JobRecord]
    sweep: int | None
    expiring: dict[str, int]


def _key(r: JobRecord) -> str | None:
    return None if r.idempotency is None else r.idempotency[0]


def _input(r: JobRecord) -> bytes:
    """An archived /runsync job's input: kept only while a /retry may need it (a failed job's)."""
    try:
        return codec.dumps(r.input)
    except Exception:
        return b"null"


def _state(r: JobRecord) -> bytes:
    """A job's state encoded. One that cannot be (error details from a worker nested too deep) is written with
    its details as text, so that no record can stop the writer."""
    try:
        return codec.dumps(r.state())
    except Exception as e:
        log.error("job %s: state not encodable (%s); error details kept as text", r.id, e)
        state = r.state()
        if (d := r.error_details) is not None:
            etype = d.get("error_type")
            state["error_details"] = make_error_details(
                etype if isinstance(etype, str) else "HandlerError", str(d)[:4096]
            )
        return codec.dumps(state)
