"""The compact form of a finished job: what the broker's jobs dict holds for it during its retention.

A finished job is read (``/status``, ``/requests``) and expired, and almost never changed again, yet a
``JobRecord`` keeps 29 slots, three timestamp ints and a collector header for it: about 600 bytes a job, and a
/run job is retained 30 minutes. ``Finished`` is the same record packed into one ``bytes`` object (no collector
header, no per-field objects): a fixed header (status, flags, worker, created, the two offsets, retention), the
output, and a JSON tail with only the fields that differ from their defaults (an error, retries, a webhook, a
failed job's input for /retry...). With the id string as the dict's key and its slot there, a no-op /runsync job
costs about 230 bytes.

The dict keeps ``JobRecord | Finished``. Finished answers the attributes the broker reads while scanning (status,
started, ended, expires, worker_id, idempotency and the rest of a record's fields), but not ``id``: the id is the
dict's key and is not stored twice. ``thaw(job_id)`` turns it back into a ``JobRecord`` (a copy for readers, or
the record itself when a /retry or a lowered retention changes it).

A record is kept whole (``freeze`` returns None) when it has stream items, when a /retry left an older retention
entry pointing at it, or when a field does not fit the header (an offset over 24 days).
"""

from __future__ import annotations

import struct
from typing import Any

from ... import codec
from ...models import JobStatus
from .record import JobRecord

__all__ = ["Finished", "freeze", "held_bytes", "summary_of", "thaw"]

S = JobStatus
_STATUSES = list(JobStatus)
_CODE = {s: i for i, s in enumerate(_STATUSES)}
# flags (status in the low 3 bits, then sync, a JSON tail, an output), worker name index, created, start and end
# offsets from created (-1: never started), retention. With a tail, the output's length follows (4 bytes); without
# one, the output is the rest.
_HEAD = struct.Struct("<BHqiiI")
_OUT_LEN = struct.Struct("<I")
_SYNC, _TAIL, _OUT = 8, 16, 32
_U32 = 2**32 - 1
_NO_WORKER = 0xFFFF
_I32 = 2**31 - 1

# Worker ids are few and repeat on every job: each Finished names its worker by a 2-byte index into this table
# (a process sees a few hundred workers over its life, not 65,535; past that the name goes in the JSON tail).
_names: list[str] = []
_index: dict[str, int] = {}

# The fields a JSON tail may carry (each left out when it has its default) and their defaults.
_DEFAULTS: dict[str, Any] = {
    "error": None, "error_details": None, "retries": 0, "webhook": None, "execution_timeout": None, "ttl": None,
    "requeued": None, "low_priority": False, "webhook_items": 0, "trace": None, "cursor": 0,
}  # fmt: skip
_FIELDS = tuple(_DEFAULTS)
_PLAIN = tuple(_DEFAULTS.values())

# Estimated bytes that a retained job holds besides its Finished's length and its id's: the bytes and str object
# headers (33 + 49) and their allocator rounding, the jobs dict's slot at its load factor, the retention FIFO's.
FINISHED_OVERHEAD = 150
# The same for a record kept whole (a JobRecord and its int fields), and per stream item (bytes header, list slot).
RECORD_OVERHEAD = 600
ITEM_OVERHEAD = 48


def _worker_code(worker_id: str | None) -> int | None:
    if worker_id is None:
        return _NO_WORKER
    code = _index.get(worker_id)
    if code is None:
        if len(_names) >= _NO_WORKER:
            return None
        code = _index[worker_id] = len(_names)
        _names.append(worker_id)
    return code


class Finished(bytes):
    """A finished record packed into one bytes object (see the module docstring for the layout)."""

    __slots__ = ()

    def _head(self) -> tuple[int, int, int, int, int, int]:
        return _HEAD.unpack_from(self)

    def _parts(self) -> tuple[bytes | None, dict[str, Any]]:
        """Its output and its JSON tail."""
        flags, n = self[0], _HEAD.size
        if not flags & _TAIL:
            return (self[n:] if flags & _OUT else None), {}
        (out_len,) = _OUT_LEN.unpack_from(self, n)
        n += _OUT_LEN.size
        out = self[n : n + out_len] if flags & _OUT else None
        tail: dict[str, Any] = codec.loads(memoryview(self)[n + out_len :])
        return out, tail

    def _tail(self) -> dict[str, Any]:
        return self._parts()[1] if self[0] & _TAIL else {}

    # --- what the broker reads while scanning its jobs ------------------------------------------------------

    @property
    def status(self) -> JobStatus:
        return _STATUSES[self[0] & 7]

    @property
    def sync(self) -> bool:
        return bool(self[0] & _SYNC)

    @property
    def created(self) -> int:
        return self._head()[2]

    @property
    def started(self) -> int | None:
        h = self._head()
        return None if h[3] < 0 else h[2] + h[3]

    @property
    def ended(self) -> int:
        h = self._head()
        return h[2] + h[4]

    @property
    def retention(self) -> int:
        return self._head()[5]

    @property
    def expires(self) -> int:
        h = self._head()
        return h[2] + h[4] + h[5]

    @property
    def output(self) -> bytes | None:
        return self._parts()[0]

    @property
    def worker_id(self) -> str | None:
        code = self._head()[1]
        if code != _NO_WORKER:
            return _names[code]
        worker: str | None = self._tail().get("worker_id")
        return worker

    @property
    def idempotency(self) -> tuple[str, str] | None:
        key = self._tail().get("idempotency")
        return None if key is None else (key[0], key[1])

    @property
    def error(self) -> str | None:
        error: str | None = self._tail().get("error")
        return error

    @property
    def retries(self) -> int:
        retries: int = self._tail().get("retries", 0)
        return retries

    @property
    def attempt(self) -> int:
        attempt: int | None = self._tail().get("attempt")
        return (0 if self.started is None else 1) if attempt is None else attempt

    @property
    def input(self) -> Any:
        return self._tail().get("input")

    @property
    def stream(self) -> tuple[()]:
        return ()

    @property
    def waiters(self) -> None:
        return None

    def thaw(self, job_id: str) -> JobRecord:
        """The JobRecord this was frozen from."""
        flags, worker, created, start_off, end_off, retention = self._head()
        r = JobRecord(job_id, None, created, sync=bool(flags & _SYNC), status=_STATUSES[flags & 7])
        r.started = None if start_off < 0 else created + start_off
        r.ended = created + end_off
        r.retention = retention
        r.output, tail = self._parts()
        r.worker_id = None if worker == _NO_WORKER else _names[worker]
        r.attempt = 0 if r.started is None else 1
        r.retained_in = 1
        if tail:
            for k in _DEFAULTS:
                if k in tail:
                    setattr(r, k, tail[k])
            r.input = tail.get("input")
            r.attempt = tail.get("attempt", r.attempt)
            r.worker_id = tail.get("worker_id", r.worker_id)
            if (events := tail.get("webhook_events")) is not None:
                r.webhook_events = frozenset(events)
            if (key := tail.get("idempotency")) is not None:
                r.idempotency = (key[0], key[1])
        return r

    def summary(self, job_id: str) -> dict[str, Any]:
        """One row of /requests, as JobRecord.summary writes it."""
        _, _, created, start_off, end_off, _ = self._head()
        d: dict[str, Any] = {"id": job_id, "status": self.status.value, "createdAt": created}
        if start_off >= 0:
            d["delayTime"] = start_off
            d["executionTime"] = end_off - start_off
        return d


def freeze(r: JobRecord) -> Finished | None:
    """The compact form of a finished record; None when it must stay whole (see the module docstring)."""
    if r.stream or r.retained_in != 1 or r.ended is None or not r.status.terminal:
        return None
    start_off = -1 if r.started is None else r.started - r.created
    end_off = r.ended - r.created
    if not (-1 <= start_off <= _I32 and 0 <= end_off <= _I32 and 0 <= r.retention <= _U32):
        return None
    worker = _index.get(r.worker_id) if r.worker_id is not None else _NO_WORKER  # (a known worker: the usual case)
    out = r.output
    values = (r.error, r.error_details, r.retries, r.webhook, r.execution_timeout, r.ttl, r.requeued, r.low_priority,
              r.webhook_items, r.trace, r.cursor)  # fmt: skip
    plain = (
        values == _PLAIN
        and r.attempt == (0 if r.started is None else 1)
        and r.webhook_events is None
        and r.idempotency is None
        and r.input is None
    )
    tail = {} if plain else _tail_of(r, values)  # (most jobs: one comparison of the plain fields, no dict built)
    if worker is None and (worker := _worker_code(r.worker_id)) is None:
        worker, tail["worker_id"] = _NO_WORKER, r.worker_id
    if out is not None and len(out) > _U32:
        return None
    flags = _CODE[r.status] | (_SYNC if r.sync else 0) | (_TAIL if tail else 0) | (0 if out is None else _OUT)
    head = _HEAD.pack(flags, worker, r.created, start_off, end_off, r.retention)
    if not tail:
        return Finished(head if out is None else head + out)  # the output straight after the header
    try:
        extra = codec.dumps(tail)
    except Exception:  # error details nested too deep to write: kept whole, as they came
        return None
    head += _OUT_LEN.pack(0 if out is None else len(out))
    return Finished(b"".join((head, out or b"", extra)))


def _tail_of(r: JobRecord, values: tuple[Any, ...]) -> dict[str, Any]:
    """The fields that differ from their defaults (``values``: the plain fields, in ``_FIELDS``' order)."""
    tail: dict[str, Any] = {k: v for k, v, d in zip(_FIELDS, values, _PLAIN, strict=True) if v != d}
    if r.attempt != (0 if r.started is None else 1):
        tail["attempt"] = r.attempt
    if r.webhook_events is not None:
        tail["webhook_events"] = sorted(r.webhook_events)
    if r.idempotency is not None:
        tail["idempotency"] = list(r.idempotency)
    if r.input is not None:
        tail["input"] = r.input  # a failed job's, for /retry
    return tail


def thaw(job_id: str, v: JobRecord | Finished) -> JobRecord:
    return v.thaw(job_id) if isinstance(v, Finished) else v


def summary_of(job_id: str, v: JobRecord | Finished) -> dict[str, Any]:
    return v.summary(job_id) if isinstance(v, Finished) else v.summary()


def held_bytes(job_id: str, v: JobRecord | Finished) -> int:
    """What a retained record holds in memory, estimated (the bound of --max-retained-mb counts this)."""
    if isinstance(v, Finished):
        return len(v) + len(job_id) + FINISHED_OVERHEAD
    n = RECORD_OVERHEAD + len(job_id) + (0 if v.output is None else len(v.output))
    for item in v.stream:
        n += len(item) + ITEM_OVERHEAD
    return n
