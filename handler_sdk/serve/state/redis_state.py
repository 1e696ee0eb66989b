"""``--store redis://HOST:PORT/DB``: the endpoint's jobs in Redis, shared by any number of serve replicas.

The engine (``redis_jobs.py``, one Lua function per transition) behind the interface of ``api.py``. Inputs and
outputs stay serialized JSON in Redis; this module encodes what the routes hand it and builds the replies they
send. Everything a replica must know about a job is in Redis, so any replica answers for any job; what stays in
the process is per replica by design: the hooks and counters behind /metrics and the dashboard's history, and
the in-flight cap of the rate limits (``redis_limits.py``).

Webhooks: a job's completed webhook is written to a shared outbox by the same script that ends the job, and sent
by whichever replica claims it first (``deliver_hooks``); a claim is a lease, so a replica that dies holding one
leaves it to come due again for another. The other webhook events (start, progress, output) are not sent with
this store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

from ... import codec, trace
from ...errors import BadRequest, HTTPError, NotFound, OutputNotSerializable, StoreError, Unprocessable
from ...models import JobStatus, RunRequest
from .api import JobView, Lease, Leased, Watch
from .changes import ChangeFeed
from .changes import Watch as FeedWatch
from .idempotency import KEY_HEADER, fingerprint
from .ids import new_job_id, now_ms
from .redis_client import connect
from .redis_jobs import RedisJobs, RedisJobsConfig
from .redis_records import StoredJob

__all__ = ["RedisState"]

log = logging.getLogger(__name__)
S = JobStatus
# A wait "forever" is a long timer: uvloop refuses an infinite one.
_FOREVER = 365 * 86400.0


# Sends one completed webhook: (job id, url, the job's reply, its traceparent, the webhook-id) -> delivered.
_Send = Callable[[str, str, dict[str, Any], str, str], Awaitable[bool]]


class _Watch:
    """A watch on the replica's change feed: made before a read, it misses no change after it."""

    __slots__ = ("feed", "job_id", "w")

    def __init__(self, feed: ChangeFeed, job_id: str) -> None:
        self.feed = feed
        self.job_id = job_id
        self.w: FeedWatch | None = None

    def __enter__(self) -> _Watch:
        self.w = self.feed.watch(self.job_id)
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.w is not None:
            self.feed.forget(self.w)
            self.w = None

    async def wait(self, timeout: float) -> bool:
        assert self.w is not None, "use the watch in a with block"
        return bool(await self.w.changes(min(timeout, _FOREVER)))


def _view(job_id: str, status: JobStatus, *, sync: bool = False, created: int = 0) -> StoredJob:
    """A job as a transition left it, for a reply that needs only its id and status."""
    return StoredJob(job_id, status, created, sync, 0)


class RedisState:
    kind = "redis"

    def __init__(
        self, url: str, endpoint: str, config: RedisJobsConfig | None = None, *, clock: Callable[[], int] = now_ms
    ) -> None:
        self.url = url
        self.client = connect(url)
        self.jobs = RedisJobs(self.client, endpoint, config or RedisJobsConfig(), clock=clock)
        self.cfg = self.jobs.cfg
        self.on_terminal: list[Callable[[Any], None]] = []
        self.on_event: list[Callable[[str, Any], None]] = []
        self.submitted: dict[str, int] = {"run": 0, "runsync": 0, "openai": 0}
        self.stream_items = 0
        self.stream_bytes = 0
        # Set by stop(): the background loops end at their next turn. A cancel alone is not enough, as redis-py
        # can swallow one that lands inside a command, and the loop would go on.
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True
        self.jobs.interrupt()

    async def open(self) -> None:
        try:
            await self.jobs.open()
        except StoreError as e:
            raise StoreError(f"cannot reach the Redis store at {self.url}: {e}") from None

    async def close(self) -> None:
        await self.jobs.close()
        await self.client.aclose()

    async def run_clock(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.cfg.tick_s)
            try:
                await self.jobs.tick()
            except StoreError as e:  # Redis is down: the deadlines wait for it (no replica can apply them)
                log.warning("deadlines not applied: %s", e)
                await asyncio.sleep(1.0)

    def now(self) -> int:
        return self.jobs.clock()

    # --- client side ---------------------------------------------------------------------------------------

    def _new(self, req: RunRequest, sync: bool, key: str | None, route: str | None, trace_: str | None) -> _New:
        try:
            data = codec.dumps(req.input)
        except OutputNotSerializable as e:
            raise BadRequest(f"input cannot be stored: {e}") from None
        extras: dict[str, Any] = {}
        if trace_ is not None:
            extras["trace"] = trace_
        if req.webhook is not None:
            extras["webhook"] = req.webhook
        p = req.policy
        events = req.webhook_events
        return _New(
            job_id=f"sync-{new_job_id()}" if sync else new_job_id(),
            data=data,
            kw={
                "sync": sync, "low_priority": p.low_priority, "ttl": p.ttl, "execution_timeout": p.execution_timeout,
                "meta": codec.dumps(extras) if extras else None, "sse": route == "openai",
                "idempotency": None if key is None else (key, fingerprint(req, "runsync" if sync else "run")),
                "hook": req.webhook is not None and (events is None or "completed" in events),
            },
        )  # fmt: skip

    async def _replay(self, key: str, hit: tuple[str, str], fp: str) -> StoredJob:
        if hit[1] != fp:
            raise Unprocessable(
                f"{KEY_HEADER} {key!r} was used for a different request (job {hit[0]}); a key names one request "
                "(same body, same route) for as long as its job is retained"
            )
        r = await self.jobs.status(hit[0])
        if r is None:
            raise NotFound(f"job {hit[0]} not found (purged or past its retention)")
        return r

    async def submit(
        self,
        req: RunRequest,
        *,
        sync: bool = False,
        key: str | None = None,
        route: str | None = None,
        trace: str | None = None,
    ) -> tuple[JobView, bool]:
        new = self._new(req, sync, key, route, trace)
        hit = await self.jobs.submit(new.job_id, new.data, **new.kw)
        if hit is not None:
            assert key is not None
            return await self._replay(key, hit, new.kw["idempotency"][1]), True
        self.submitted[route or ("runsync" if sync else "run")] += 1
        return _view(new.job_id, S.IN_QUEUE, sync=sync, created=self.now()), False

    async def runsync(
        self, req: RunRequest, *, key: str | None, trace: str | None, timeout: float
    ) -> tuple[JobView, bool]:
        new = self._new(req, True, key, None, trace)
        # Watched before it exists: the end is announced, so the record is read once, at the end.
        w = self.jobs.feed.watch(new.job_id)
        try:
            hit = await self.jobs.submit(new.job_id, new.data, **new.kw)
            if hit is not None:
                assert key is not None
                r = await self._replay(key, hit, new.kw["idempotency"][1])
                return await self.wait_terminal(r, timeout), True
            self.submitted["runsync"] += 1
            done = await self.jobs._until_final(w, None, timeout)
        finally:
            self.jobs.feed.forget(w)
        return (done or _view(new.job_id, S.IN_QUEUE, sync=True, created=self.now())), False

    async def wait_terminal(self, job: JobView, timeout: float) -> JobView:
        if job.status.terminal or timeout <= 0:
            return job
        r = await self.jobs.wait_terminal(job.id, min(timeout, _FOREVER))
        return job if r is None else r

    def watch(self, job_id: str) -> Watch:
        return _Watch(self.jobs.feed, job_id)

    async def status(self, job_id: str, ttl: int | None = None) -> JobView:
        r = await self.jobs.status(job_id, ttl)
        if r is None:
            raise NotFound(f"job {job_id} not found (unknown, purged, or past its retention)")
        return r

    async def read_stream(self, job_id: str, start: int | None = None) -> tuple[JobView, Sequence[bytes]]:
        status, items = await self.jobs.read_stream(job_id, start)
        return _view(job_id, status), items

    async def input_of(self, job_id: str) -> Any:
        r = await self.status(job_id)
        assert isinstance(r, StoredJob)
        return None if r.input is None else codec.loads(r.input)

    async def cancel(self, job_id: str) -> JobView:
        status, cancelled, created, started = await self.jobs.cancel_reported(job_id)
        r = _view(job_id, status, sync=job_id.startswith("sync-"), created=created)
        if cancelled and self.on_terminal:
            r.started, r.ended = started, self.now()
            for hook in self.on_terminal:
                hook(r)
        return r

    async def retry(self, job_id: str) -> JobView:
        await self.jobs.retry(job_id)
        return _view(job_id, S.IN_QUEUE)

    async def purge(self) -> int:
        return await self.jobs.purge()

    async def health(self) -> dict[str, Any]:
        return await self.jobs.health()

    async def requests(self, limit: int, offset: int, status: JobStatus | None = None) -> dict[str, Any]:
        return await self.jobs.requests(limit, offset, status)

    async def workers(self) -> list[dict[str, Any]]:
        return await self.jobs.workers()

    async def recent(self, n: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = (await self.jobs.requests(n, 0, errors=True))["requests"]
        return rows

    async def flush(self) -> None:
        return None  # every call above returned once Redis held its write

    # --- worker side ---------------------------------------------------------------------------------------

    async def take(
        self, worker_id: str, n: int, wait: float, *, gone: Callable[[], bool] | None = None, busy: bool | None = None
    ) -> Sequence[Lease]:
        taken = await self.jobs.take(worker_id, n, wait)
        if taken and gone is not None and gone():
            # The worker hung up while its take was held: the jobs go to the next taker, not to a dead lease.
            await self.jobs.hand_back(worker_id, [t.id for t in taken])
            return []
        leases = []
        for t in taken:
            extras = codec.loads(t.meta) if t.meta else {}
            tp = extras.get("trace")
            if not isinstance(tp, str):
                tp = trace.derived(t.id)
            leases.append(Leased(t.id, codec.loads(t.input) if t.input else None, tp, t.execution_timeout))
        return leases

    async def stream(
        self, worker_id: str, job_id: str, outputs: Sequence[bytes], metrics: Sequence[bytes | None]
    ) -> int:
        n = await self.jobs.stream(worker_id, job_id, outputs, metrics)
        self.stream_items += len(outputs)
        self.stream_bytes += sum(len(o) for o in outputs)
        return n

    async def progress(self, worker_id: str, job_id: str, output: bytes) -> None:
        await self.jobs.progress(worker_id, job_id, output)

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
    ) -> None:
        raw = None if details is None else codec.dumps(details)
        created, started = await self.jobs.done(worker_id, job_id, status, output=output, error=error, details=raw)
        if self.on_terminal:
            r = StoredJob(job_id, status, created, job_id.startswith("sync-"), 0, started=started, ended=self.now())
            for hook in self.on_terminal:
                hook(r)

    async def completed_many(
        self, worker_id: str, results: Sequence[tuple[str, bytes | None]]
    ) -> list[HTTPError | None]:
        verdicts: list[HTTPError | None] = []
        for job_id, output in results:
            try:
                await self.done(worker_id, job_id, JobStatus.COMPLETED, output=output, durable=False)
            except HTTPError as e:
                verdicts.append(e)
                continue
            verdicts.append(None)
        return verdicts

    async def ping(self, worker_id: str, job_ids: Sequence[str] = (), *, initializing: bool = False) -> None:
        await self.jobs.ping(worker_id, job_ids, initializing=initializing)

    async def stops(self, worker_id: str, wait: float = 0.0) -> list[str]:
        return await self.jobs.stops(worker_id, min(wait, _FOREVER))

    async def hand_back(self, worker_id: str, job_ids: Sequence[str]) -> int:
        return await self.jobs.hand_back(worker_id, job_ids)

    async def leave(self, worker_id: str) -> None:
        await self.jobs.leave(worker_id)

    # --- webhooks ------------------------------------------------------------------------------------------

    async def deliver_hooks(self, send: _Send, lease_ms: int, idle_s: float = 0.2) -> None:
        """Claim due completed webhooks and send each (``send(job_id, url, reply, traceparent, msg_id)``, retried
        inside; the webhook-id is the same whichever replica sends it, so a receiver can deduplicate),
        until stopped; a delivery is acknowledged once sent or given up, so it leaves the outbox."""
        while not self._stopping:
            try:
                claimed = await self.jobs.claim_hooks(lease_ms)
            except StoreError as e:
                log.warning("webhook outbox unreachable: %s", e)
                claimed = []
            if not claimed:
                await asyncio.sleep(idle_s)
                continue
            await asyncio.gather(*(self._deliver(send, r) for r in claimed))

    async def _deliver(self, send: _Send, r: StoredJob) -> None:
        url = r.extras().get("webhook")
        if isinstance(url, str):
            await send(r.id, url, r.reply(), r.traceparent, f"msg_{r.id.replace('-', '')}_{r.ended}")
        try:
            await self.jobs.ack_hook(r.id)
        except StoreError as e:  # it comes due again after its lease: sent twice, never lost
            log.warning("webhook of job %s sent, not acknowledged: %s", r.id, e)


class _New:
    __slots__ = ("data", "job_id", "kw")

    def __init__(self, job_id: str, data: bytes, kw: dict[str, Any]) -> None:
        self.job_id, self.data, self.kw = job_id, data, kw
