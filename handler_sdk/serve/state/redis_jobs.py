"""The job state of one endpoint in Redis, shared by any number of serve replicas.

Each transition (submit, take, stream, progress, done, cancel, retry, purge, hand-back, a worker's lease lapse,
the deadlines) is one Lua script (``lua/``), so replicas never race a read-modify-write, and the /health counts
change in the same script as the records they count. Every key of an endpoint starts ``hsdk:{endpoint}:``; the
braces are a cluster hash tag, so one endpoint's keys share a slot and two endpoints can share a Redis:

======================  =====================================================================================
``job:<id>``            hash: status, created, started, ended, input, output, error, details, retries, worker,
                        ttl, exec, requeued, low, sync, retention, cursor, attempt, sse, meta
``stream:<id>``         list: the job's stream items, fully serialized
``q``, ``qlow``         lists: queued ids (normal, lowPriority); stale ids are dropped when popped
``dl``                  sorted set by due ms: ``ttl|<id>|<due>``, ``exec|<id>|<started>``, ``exp|<id>``,
                        ``lease|<worker>``
``counts``              hash: jobs per status, and ``retried``
``ids``                 sorted set by created: every retained job (/requests)
``workers``             hash: worker id -> "1" while it initializes, else "0"
``wjobs:<worker>``      set: the jobs leased to it
``stops:<worker>``      set: the jobs it must stop
``rl:<group>``          list: the rate-limit window of a route group
``idem:<key>``          hash: the job an Idempotency-Key names (id) and its request fingerprint (fp)
``hooks``               sorted set: jobs whose completed webhook is due, by due ms (a claim moves it on)
``idle``                sorted set of idle takers (scored by ``idleseq``, a counter: the one idle longest first);
``idlech``, ``idleroom``  hashes: each one's replica wake channel tag, and its free slots
``awake``               sorted set of woken takers not yet asking, by when; ``awakeroom`` (hash) their free slots,
                        ``awroom`` their sum
``changed``             pub/sub channel: ``<id> <status>``, ``w:<worker>`` (stops)
``wake:<tag>``          pub/sub channel of one replica process: ``w <worker>`` (work queued for its idle take),
                        ``d <worker>`` (it became idle through another replica)
======================  =====================================================================================

Time is the caller's: each script gets ``now_ms`` from the engine's clock, never Redis's, and no key expires on
its own; the deadlines are applied by ``tick``, which every replica calls, each due member applied once by
whichever replica's tick removes it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ...chunker import scrub_metrics
from ...errors import Conflict, NotFound, StoreError
from ...models import JobStatus
from .changes import LOST, ChangeFeed, Watch
from .redis_client import key_prefix
from .redis_records import RedisJobsConfig, StoredJob, Taken
from .redis_takes import Takes
from .scripts import SCRIPTS

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisJobs", "RedisJobsConfig", "StoredJob", "Taken"]

S = JobStatus
# Changes after which a waiter for the end reads the record again: an end, a deletion, a lost feed.
_FINAL = frozenset({*(s.value for s in S if s.terminal), "GONE", LOST})


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _conflict(job_id: str, worker_id: str, reply: Any) -> None:
    if isinstance(reply, list) and reply and reply[0] == b"conflict":
        status = reply[1].decode()
        if status == "missing":
            raise NotFound(f"job {job_id} not found (unknown, purged, or past its retention)")
        raise Conflict(f"job {job_id} is {status} and not leased to worker {worker_id}; result ignored")


def _opt(v: int | None) -> int | str:
    return "" if v is None else v


class RedisJobs:
    """One replica's handle on an endpoint's job state in Redis. Every method is one round trip."""

    def __init__(
        self,
        client: Redis,
        endpoint: str,
        config: RedisJobsConfig | None = None,
        *,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self.client = client
        self.prefix = key_prefix(endpoint)
        self.cfg = config or RedisJobsConfig()
        self.clock = clock
        # The replica's own wake channel: unique per process, so a gone process's channel has no subscriber.
        tag = secrets.token_hex(6)
        self.feed = ChangeFeed(client, self.prefix + "changed", own=self.prefix + "wake:" + tag)
        # Set when the replica shuts down: held takes and stop polls answer at once (empty) instead of holding
        # the in-process worker's drain for their hold time.
        self.closing = False
        self.takes = Takes(self._call, self.feed, self.cfg, tag, lambda: self.closing)
        self.feed.on_own = self.takes.message

    async def open(self) -> None:
        """Load the scripts and subscribe to the endpoint's change channel."""
        from redis.exceptions import ConnectionError as RedisConnectionError

        try:
            await SCRIPTS.load(self.client)
            await self.feed.start()
        except (RedisConnectionError, OSError) as e:
            raise StoreError(str(e)) from None

    def interrupt(self) -> None:
        """Shutting down: no further takes, and every held wait returns now."""
        self.closing = True
        self.feed.wake_all()

    async def close(self) -> None:
        await self.takes.close()
        await self.feed.stop()

    async def _call(self, name: str, *args: Any) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            reply = await SCRIPTS.call(self.client, name, self.prefix, self.clock(), *args)
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            # Redis is down or unreachable past the client's resends: the request is answered 503, not 500.
            raise StoreError(f"Redis unavailable: {e}") from None
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # redis-py can answer a command whose task was cancelled meanwhile and drop the CancelledError: the
            # caller would then loop on, uncancellable (a worker's stop poll held serve's shutdown for its whole
            # drain deadline). Re-raised here, a cancel always lands.
            raise asyncio.CancelledError
        return reply

    # --- client side ---------------------------------------------------------------------------------------

    async def submit(
        self,
        job_id: str,
        input: bytes,
        *,
        sync: bool = False,
        low_priority: bool = False,
        ttl: int | None = None,
        execution_timeout: int | None = None,
        meta: bytes | None = None,
        sse: bool = False,
        idempotency: tuple[str, str] | None = None,
        hook: bool = False,
    ) -> tuple[str, str] | None:
        """Queue a new job (``meta``: opaque bytes the caller wants back, e.g. its trace; ``sse``: an OpenAI
        streamed answer, which a lost lease after its first item fails rather than runs again; ``hook``: its
        completed webhook goes through the shared outbox). With ``idempotency`` (key, fingerprint), a key that
        names a job still retained returns (that job's id, its fingerprint) and queues nothing."""
        retention = self.cfg.sync_retention_ms if sync else self.cfg.run_retention_ms
        key, fp = idempotency if idempotency is not None else ("", "")
        reply = await self._call(
            "submit", job_id, input, int(sync), int(low_priority), _opt(ttl), _opt(execution_timeout), retention,
            meta or b"", int(sse), key, fp, int(hook),
        )  # fmt: skip
        if isinstance(reply, list):
            return reply[0].decode(), reply[1].decode()
        if not reply:
            raise Conflict(f"job id {job_id} is taken")
        return None

    async def status(self, job_id: str, ttl: int | None = None) -> StoredJob | None:
        """The record, or None if unknown; a ``ttl`` below its retention shortens the retention."""
        flat = await self._call("read", "status", job_id, _opt(ttl))
        return None if flat is None else StoredJob.parse(job_id, flat)

    async def read_stream(self, job_id: str, start: int | None = None) -> tuple[JobStatus, list[bytes]]:
        """The job's status and its stream items: from ``start``, or those past the cursor (which moves on)."""
        reply = await self._call("read", "stream", job_id, _opt(start))
        if reply is None:
            raise NotFound(f"job {job_id} not found (unknown, purged, or past its retention)")
        return S(reply[0].decode()), list(reply[1:])

    async def cancel(self, job_id: str) -> JobStatus:
        return (await self.cancel_reported(job_id))[0]

    async def cancel_reported(self, job_id: str) -> tuple[JobStatus, bool, int, int | None]:
        """The status after the cancel, whether this call cancelled it (False: it had ended already), and the
        job's created and started times."""
        reply = await self._call("cancel", job_id, "report")
        if reply is None:
            raise NotFound(f"job {job_id} not found (unknown, purged, or past its retention)")
        return S(reply[0].decode()), bool(reply[1]), int(reply[2]), int(reply[3]) if reply[3] else None

    async def retry(self, job_id: str) -> None:
        reply = await self._call("retry", job_id)
        if reply is None:
            raise NotFound(f"job {job_id} not found (unknown, purged, or past its retention)")
        if isinstance(reply, list):
            status = reply[1].decode()
            raise Conflict(f"job {job_id} is {status}; only FAILED or TIMED_OUT jobs can be retried")

    async def purge(self) -> int:
        return int(await self._call("purge"))

    async def health(self) -> dict[str, Any]:
        flat = await self._call("read", "health")
        c = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
        idle, running, init = c.pop("workers")

        def n(k: str) -> int:
            return int(c.get(k, 0))

        return {
            "jobs": {
                "completed": n("COMPLETED"),
                "failed": n("FAILED") + n("TIMED_OUT"),
                "inProgress": n("IN_PROGRESS"),
                "inQueue": n("IN_QUEUE"),
                "retried": n("retried"),
            },
            "workers": {"idle": idle, "running": running, "initializing": init},
        }

    async def counts(self) -> dict[str, int]:
        """The raw per-status counters (and ``retried``), as the scripts keep them."""
        flat = await self._call("read", "health")
        return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat) - 2, 2)}

    async def requests(
        self, limit: int, offset: int, status: JobStatus | None = None, *, errors: bool = False
    ) -> dict[str, Any]:
        """/requests; ``errors``: each row with its error too (the dashboard's recent jobs)."""
        reply = await self._call("read", "requests", limit, offset, "" if status is None else status.value)
        rows = []
        for job_id, st, created, started, ended, error in reply[1:]:
            d: dict[str, Any] = {"id": job_id.decode(), "status": st.decode(), "createdAt": int(created)}
            if started:
                d["delayTime"] = int(started) - int(created)
                if ended:
                    d["executionTime"] = int(ended) - int(started)
            if errors and error:
                d["error"] = error.decode()
            rows.append(d)
        return {"requests": rows, "total": int(reply[0]), "limit": limit, "offset": offset}

    async def wait_terminal(self, job_id: str, timeout: float) -> StoredJob | None:
        """Wait up to ``timeout`` s for the job to end (or vanish), then read it: no Redis call while waiting."""
        w = self.feed.watch(job_id)
        try:
            r = await self.status(job_id)
            return r if r is None else await self._until_final(w, r, timeout)
        finally:
            self.feed.forget(w)

    async def submit_and_wait(self, job_id: str, input: bytes, timeout: float, **kw: Any) -> StoredJob | None:
        """/runsync: submit, then wait up to ``timeout`` s for the end. Two round trips when it ends in time: the
        watch is in place before the submit, so the record need not be read until the end is announced."""
        w = self.feed.watch(job_id)
        try:
            await self.submit(job_id, input, sync=True, **kw)
            return await self._until_final(w, None, timeout)
        finally:
            self.feed.forget(w)

    async def wait_change(self, job_id: str, timeout: float) -> list[str]:
        """Wait up to ``timeout`` s for anything to happen to the job (a stream item, progress, its end); returns
        the statuses announced ([] if none). For relays that read the job again themselves (/stream, OpenAI)."""
        w = self.feed.watch(job_id)
        try:
            return await w.changes(timeout)
        finally:
            self.feed.forget(w)

    async def _until_final(self, w: Watch, r: StoredJob | None, timeout: float) -> StoredJob | None:
        """``r`` None: just submitted by us, so known to be queued and not read yet."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        fresh = r is None
        while fresh or (r is not None and not r.status.terminal):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return await self.status(w.key) if fresh else r
            seen = await w.changes(remaining)
            if any(s in _FINAL for s in seen):
                r, fresh = await self.status(w.key), False
        return r

    # --- worker side ---------------------------------------------------------------------------------------

    async def take(self, worker_id: str, n: int, wait: float = 0.0) -> list[Taken]:
        """Lease up to ``n`` queued jobs, holding an empty take open up to ``wait`` s for a job queued for it
        (``redis_takes.py``: a queued job wakes one idle taker, on whichever replica)."""
        return await self.takes.take(worker_id, n, wait)

    async def stream(
        self, worker_id: str, job_id: str, outputs: Sequence[bytes], metrics: Sequence[bytes | None]
    ) -> int:
        """Append stream items (serialized outputs, and metrics objects or None); returns the item count."""
        args: list[bytes] = []
        for out, m in zip(outputs, metrics, strict=True):
            args += (out, scrub_metrics(m) or b"")
        reply = await self._call("stream", worker_id, job_id, self.cfg.lease_ms, *args)
        _conflict(job_id, worker_id, reply)
        return int(reply)

    async def progress(self, worker_id: str, job_id: str, output: bytes) -> None:
        _conflict(job_id, worker_id, await self._call("progress", worker_id, job_id, self.cfg.lease_ms, output))

    async def done(
        self,
        worker_id: str,
        job_id: str,
        status: JobStatus,
        *,
        output: bytes | None = None,
        error: str | None = None,
        details: bytes | None = None,
    ) -> tuple[int, int | None]:
        """Record a result; Conflict unless the job is in progress under this worker's lease. Returns the job's
        created and started times (for the replica's own /metrics)."""
        reply = await self._call(
            "done", worker_id, job_id, self.cfg.lease_ms, status.value, output or b"", error or "", details or b""
        )
        _conflict(job_id, worker_id, reply)
        return int(reply[0]), (int(reply[1]) if reply[1] else None)

    async def workers(self) -> list[dict[str, Any]]:
        """Every attached worker with its state, its jobs and when its lease was last renewed (the dashboard)."""
        rows = []
        for wid_b, init, jobs_b, due in await self._call("read", "workers"):
            jobs = sorted(j.decode() for j in jobs_b)
            state = "initializing" if init == b"1" else "running" if jobs else "idle"
            seen = None if due is None else int(due) - self.cfg.lease_ms
            rows.append({"id": wid_b.decode(), "state": state, "jobs": jobs, "lastPing": seen})
        return rows

    async def ping(self, worker_id: str, job_ids: Sequence[str] = (), *, initializing: bool = False) -> None:
        await self._call("workers", "ping", worker_id, self.cfg.lease_ms, int(initializing), *job_ids)

    async def stops(self, worker_id: str, wait: float = 0.0) -> list[str]:
        """Jobs this worker must stop, holding an empty reply up to ``wait`` s."""
        w = self.feed.watch(f"w:{worker_id}")
        try:
            ids = await self._call("workers", "stops", worker_id)
            if not ids and wait > 0 and not self.closing and await w.changes(wait):
                ids = await self._call("workers", "stops", worker_id)
            return [i.decode() for i in ids]
        finally:
            self.feed.forget(w)

    async def hand_back(self, worker_id: str, job_ids: Sequence[str]) -> int:
        return int(await self._call("workers", "hand_back", worker_id, *job_ids))

    async def leave(self, worker_id: str) -> int:
        """A worker that is gone: its jobs are lost leases. Returns how many were in progress."""
        self.takes.leave(worker_id)
        return int(await self._call("workers", "leave", worker_id, self.cfg.max_attempts))

    async def claim_hooks(self, lease_ms: int, n: int = 64) -> list[StoredJob]:
        """Up to ``n`` due completed-webhook deliveries, leased to this replica for ``lease_ms``."""
        reply = await self._call("hooks", "claim", lease_ms, n)
        return [StoredJob.parse(i.decode(), rec) for i, rec in reply]

    async def ack_hook(self, job_id: str) -> None:
        await self._call("hooks", "ack", job_id)

    # --- time ----------------------------------------------------------------------------------------------

    async def tick(self) -> tuple[int, int]:
        """Apply the deadlines due by this replica's clock; returns (deadlines applied, leases lapsed)."""
        self.takes.sweep(asyncio.get_running_loop().time())
        applied = lapsed = 0
        while True:
            n, k = await self._call("tick", self.cfg.max_attempts, self.cfg.tick_batch)
            applied, lapsed = applied + n, lapsed + k
            if n < self.cfg.tick_batch:
                return applied, lapsed

    async def run_clock(self) -> None:
        """The background ticker; every replica runs one."""
        while True:
            await asyncio.sleep(self.cfg.tick_s)
            await self.tick()
