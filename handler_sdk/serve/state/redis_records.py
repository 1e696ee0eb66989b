"""The records of the Redis engine as Python sees them, and its settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ... import codec, trace
from ...models import JobStatus
from .config import BrokerConfig

__all__ = ["RedisJobsConfig", "StoredJob", "Taken"]

S = JobStatus


@dataclass(slots=True)
class RedisJobsConfig(BrokerConfig):
    """The broker's settings (one set of defaults for both stores), plus the Redis engine's own."""

    # Deadlines applied per tick script: bounds how long one script holds redis-server.
    tick_batch: int = 256


@dataclass(slots=True)
class Taken:
    """A job as a take hands it to a worker."""

    id: str
    input: bytes
    execution_timeout: int | None
    meta: bytes | None


@dataclass(slots=True)
class StoredJob:
    """One job's record as Redis holds it (input and outputs stay serialized JSON)."""

    id: str
    status: JobStatus
    created: int
    sync: bool
    retention: int
    retries: int = 0
    # The number of the job's latest lease (1 for its first run): stream items carry it as metrics.attempt.
    attempt: int = 0
    started: int | None = None
    ended: int | None = None
    input: bytes | None = None
    output: bytes | None = None
    error: str | None = None
    details: bytes | None = None
    worker_id: str | None = None
    ttl: int | None = None
    execution_timeout: int | None = None
    requeued: int | None = None
    low_priority: bool = False
    cursor: int = 0
    stream_len: int = 0
    meta: bytes | None = None

    def reply(self) -> dict[str, Any]:
        """The job reply of /status, /status-sync and a finished /runsync, as JobRecord.reply() makes it."""
        d: dict[str, Any] = {"id": self.id, "status": self.status.value}
        if self.started is not None:
            d["delayTime"] = self.started - self.created
            if self.ended is not None:
                d["executionTime"] = self.ended - self.started
        if self.output is not None:
            d["output"] = codec.Fragment(self.output)
        if self.error is not None:
            d["error"] = self.error
            if self.details is not None:
                d["errorDetails"] = codec.Fragment(self.details)
        if self.retries:
            d["retries"] = self.retries
        if self.worker_id is not None:
            d["workerId"] = self.worker_id
        return d

    def extras(self) -> dict[str, Any]:
        """What the endpoint keeps in ``meta``: the webhook, its events, the client's traceparent."""
        return {} if not self.meta else codec.loads(self.meta)

    @property
    def traceparent(self) -> str:
        t = self.extras().get("trace")
        return t if isinstance(t, str) else trace.derived(self.id)

    @classmethod
    def parse(cls, job_id: str, flat: Sequence[bytes | int]) -> StoredJob:
        h = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}

        def num(k: bytes) -> int | None:
            v = h.get(k)
            return None if v is None else int(v)

        def text(k: bytes) -> str | None:
            v = h.get(k)
            return None if v is None else bytes(v).decode() if not isinstance(v, int) else str(v)

        def raw(k: bytes) -> bytes | None:
            v = h.get(k)
            return None if v is None or isinstance(v, int) else v

        return cls(
            id=job_id, status=S(str(text(b"status"))), created=int(h[b"created"]), sync=h.get(b"sync") == b"1",
            retention=int(h[b"retention"]), retries=int(h.get(b"retries", 0)), attempt=int(h.get(b"attempt", 0)),
            started=num(b"started"),
            ended=num(b"ended"), input=raw(b"input"), output=raw(b"output"), error=text(b"error"),
            details=raw(b"details"), worker_id=text(b"worker"), ttl=num(b"ttl"), execution_timeout=num(b"exec"),
            requeued=num(b"requeued"), low_priority=h.get(b"low") == b"1", cursor=int(h.get(b"cursor", 0)),
            stream_len=int(h.get(b"nstream", 0)), meta=raw(b"meta"),
        )  # fmt: skip
