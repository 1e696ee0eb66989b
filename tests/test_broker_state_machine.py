"""A hypothesis state machine over the Broker (no store, a fake clock), checked against a model of the contract.

The model is written from DESIGN section 2 and 3, not from the broker's code: which calls succeed, which answer
409 or 404, what each status becomes, and what /health must say. Every step also checks that each job's status
change is one lifecycle.TRANSITIONS allows and that only queued jobs are purged and only finished ones expire.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

from handler_sdk.errors import Conflict, NotFound
from handler_sdk.lifecycle import TRANSITIONS, IllegalTransition
from handler_sdk.models import JobStatus, RunRequest
from handler_sdk.serve.state.broker import Broker, BrokerConfig

S = JobStatus
WORKERS = ("w1", "w2", "w3")
LEASE_MS = 1_000
MAX_ATTEMPTS = 3
RUN_RETENTION = 5_000
SYNC_RETENTION = 1_500
GRACE_MS = 100
TERMINAL = (S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMED_OUT)


@dataclass
class ModelJob:
    id: str
    low: bool
    sync: bool
    created: int
    ttl: int | None
    exec_timeout: int | None
    retention: int
    status: JobStatus = S.IN_QUEUE
    worker: str | None = None
    started: int | None = None
    ended: int | None = None
    retries: int = 0
    stream: int = 0
    cursor: int = 0
    ttl_pending: bool = True
    # /retry restarts the ttl from the retry.
    ttl_from: int | None = None
    # Handed back or lost with its worker: it resumes at the front of the queue, ahead of new work of any priority.
    resumed: bool = False
    # (due, started) for each lease's execution backstop.
    exec_deadlines: list[tuple[int, int]] = field(default_factory=list)
    # What a finished job looked like when it finished: it must never change except through /retry.
    final: tuple[Any, ...] | None = None


@dataclass
class ModelWorker:
    last_seen: int
    jobs: set[str] = field(default_factory=set)
    stops: set[str] = field(default_factory=set)
    # When it last pinged: a job leased before its previous ping and missing from this one was lost.
    pinged: int | None = None


def fingerprint(r: Any) -> tuple[Any, ...]:
    return (r.status, r.output, r.error, r.ended, r.started, len(r.stream), r.retries)


class BrokerMachine(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.now = [1_000_000]
        self.loop = asyncio.new_event_loop()
        cfg = BrokerConfig(
            run_retention_ms=RUN_RETENTION,
            sync_retention_ms=SYNC_RETENTION,
            lease_ms=LEASE_MS,
            max_attempts=MAX_ATTEMPTS,
            execution_grace_ms=GRACE_MS,
        )
        self.broker = Broker(None, cfg, clock=lambda: self.now[0])
        self.model: dict[str, ModelJob] = {}
        self.gone: set[str] = set()
        self.workers: dict[str, ModelWorker] = {}
        self.retried = 0
        # Jobs the model ended ahead of the broker call that ends them (see take); None outside such a call.
        self._deferred: list[ModelJob] | None = None
        self.statuses: dict[str, JobStatus] = {}

    def teardown(self) -> None:
        self.loop.close()

    # --- model helpers ---------------------------------------------------------------------------------------

    def _seen(self, w: str) -> ModelWorker:
        mw = self.workers.setdefault(w, ModelWorker(self.now[0]))
        mw.last_seen = self.now[0]
        return mw

    def _leased_to(self, w: str, job_id: str) -> bool:
        m = self.model.get(job_id)
        return m is not None and m.status is S.IN_PROGRESS and m.worker == w

    def _expect_lease_error(self, w: str, job_id: str, call: Any) -> bool:
        """Runs ``call``; returns True if it was allowed to succeed, after checking the refusals."""
        if job_id in self.gone:
            with pytest.raises(NotFound):
                call()
            return False
        if not self._leased_to(w, job_id):
            with pytest.raises(Conflict) as e:
                call()
            assert not isinstance(e.value, IllegalTransition), "refused by the lease check, not by luck"
            return False
        return True

    def _finish(self, m: ModelJob, status: JobStatus, *, stop: bool = False) -> None:
        """``stop``: the endpoint ended a running job (cancel, timeout), so its worker is told to stop it."""
        mw = self.workers.get(m.worker) if m.status is S.IN_PROGRESS and m.worker is not None else None
        if mw is not None:
            mw.jobs.discard(m.id)
            if stop:
                mw.stops.add(m.id)
        m.status, m.ended = status, self.now[0]
        if self._deferred is not None:
            self._deferred.append(m)  # the broker acts on it in the call that follows: read its record after
            return
        m.final = fingerprint(self.broker.jobs[m.id])

    def _requeue(self, m: ModelJob) -> None:
        m.retries += 1
        self.retried += 1
        if m.retries >= MAX_ATTEMPTS:
            self._finish(m, S.FAILED)
            if self._deferred is None:
                self._check_lost(m)
            return
        m.status, m.worker, m.started, m.resumed = S.IN_QUEUE, None, None, True

    def _check_lost(self, m: ModelJob) -> None:
        r = self.broker.jobs[m.id]
        assert r.error is not None and r.error.startswith("WorkerLost:")
        m.final = fingerprint(r)

    def _leave(self, w: str) -> None:
        mw = self.workers.pop(w)
        for job_id in mw.jobs:
            self._requeue(self.model[job_id])

    def _running(self) -> list[ModelJob]:
        # In creation order, never by id: ids are random, and draws must replay the same way.
        return [m for m in self.model.values() if m.status is S.IN_PROGRESS]

    def _queued(self) -> list[ModelJob]:
        return [m for m in self.model.values() if m.status is S.IN_QUEUE]

    # --- client side -----------------------------------------------------------------------------------------

    @rule(
        target=jobs,
        low=st.booleans(),
        sync=st.booleans(),
        ttl=st.none() | st.integers(1, 4_000),
        exec_timeout=st.none() | st.integers(1, 2_000),
    )
    def submit(self, low: bool, sync: bool, ttl: int | None, exec_timeout: int | None) -> str:
        policy: dict[str, Any] = {"lowPriority": low}
        if ttl is not None:
            policy["ttl"] = ttl
        if exec_timeout is not None:
            policy["executionTimeout"] = exec_timeout
        req = RunRequest.model_validate({"input": {"n": len(self.model)}, "policy": policy})
        r = self.broker.submit(req, sync=sync)
        assert r.status is S.IN_QUEUE
        assert r.id.startswith("sync-") == sync
        retention = SYNC_RETENTION if sync else RUN_RETENTION
        self.model[r.id] = ModelJob(r.id, low, sync, self.now[0], ttl, exec_timeout, retention)
        return r.id

    @rule(job_id=jobs)
    def cancel(self, job_id: str) -> None:
        if job_id in self.gone:
            with pytest.raises(NotFound):
                self.broker.cancel(job_id)
            return
        m = self.model[job_id]
        r = self.broker.cancel(job_id)
        if m.status.terminal:
            assert r.status is m.status, "cancelling a finished job leaves its status as it was"
            return
        self._finish(m, S.CANCELLED, stop=True)
        assert r.status is S.CANCELLED

    @rule(job_id=jobs)
    def retry(self, job_id: str) -> None:
        if job_id in self.gone:
            with pytest.raises(NotFound):
                self.broker.retry(job_id)
            return
        m = self.model[job_id]
        if m.status not in (S.FAILED, S.TIMED_OUT):
            with pytest.raises(Conflict):
                self.broker.retry(job_id)
            return
        r = self.broker.retry(job_id)
        assert r.status is S.IN_QUEUE
        assert r.output is None and r.error is None and r.error_details is None and len(r.stream) == 0
        m.status, m.worker, m.started, m.ended, m.final = S.IN_QUEUE, None, None, None, None
        m.retries += 1
        m.stream = m.cursor = 0
        m.ttl_from, m.ttl_pending = self.now[0], True

    @rule()
    def purge(self) -> None:
        queued = {m.id for m in self._queued()}
        assert self.broker.purge() == len(queued)
        for job_id in queued:
            del self.model[job_id]
            self.gone.add(job_id)
            with pytest.raises(NotFound):
                self.broker.status(job_id)

    @rule(job_id=jobs, ttl=st.integers(1, 10_000))
    def shorten_retention(self, job_id: str, ttl: int) -> None:
        if job_id in self.gone:
            with pytest.raises(NotFound):
                self.broker.status(job_id, ttl)
            return
        self.broker.status(job_id, ttl)
        m = self.model[job_id]
        m.retention = min(m.retention, ttl)

    @rule(job_id=jobs, start=st.none() | st.integers(-2, 6))
    def read_stream(self, job_id: str, start: int | None) -> None:
        if job_id in self.gone:
            with pytest.raises(NotFound):
                self.broker.read_stream(job_id, start)
            return
        m = self.model[job_id]
        _, items = self.broker.read_stream(job_id, start)
        first = m.cursor if start is None else max(start, 0)
        indexes = [orjson.loads(i)["metrics"]["stream_index"] for i in items]
        assert indexes == list(range(first, m.stream))
        if start is None:
            m.cursor = max(m.cursor, m.stream)

    # --- worker side -----------------------------------------------------------------------------------------

    def _lost(self, mw: ModelWorker, job_ids: list[str]) -> None:
        for job_id in sorted(job_ids):
            mw.jobs.discard(job_id)
            self._requeue(self.model[job_id])

    @rule(w=st.sampled_from(WORKERS), n=st.integers(1, 3), busy=st.sampled_from([None, True, False]))
    def take(self, w: str, n: int, busy: bool | None) -> None:
        self._deferred = []
        if busy is False and w in self.workers:
            # "Nothing in progress" from a worker id that holds leases: a new process of it; they were lost.
            # The broker gives them back inside the take below, so the model reads its records after it.
            self._lost(self.workers[w], list(self.workers[w].jobs))
        queued = self._queued()
        taken = self.loop.run_until_complete(self.broker.take(w, n, 0.0, busy=busy))
        lost_for_good, self._deferred = self._deferred, None
        for m in lost_for_good:
            self._check_lost(m)
        ids = [r.id for r in taken]
        queued_ids = {m.id for m in queued}
        assert len(ids) == len(set(ids)) == min(n, len(queued))
        assert set(ids) <= queued_ids
        if any(self.model[i].low and not self.model[i].resumed for i in ids):
            left = queued_ids - set(ids)
            assert all(self.model[i].low and not self.model[i].resumed for i in left), (
                "a low-priority job went before a normal one"
            )
        mw = self._seen(w)
        for r in taken:
            m = self.model[r.id]
            m.status, m.worker, m.started, m.resumed = S.IN_PROGRESS, w, self.now[0], False
            if m.exec_timeout is not None:
                m.exec_deadlines.append((self.now[0] + m.exec_timeout + GRACE_MS, self.now[0]))
            mw.jobs.add(r.id)

    def _done(self, w: str, job_id: str, outcome: JobStatus) -> None:
        kw: dict[str, Any] = {}
        if outcome is S.COMPLETED:
            kw["output"] = b'{"ok":true}'
        elif outcome is S.FAILED:
            kw["error"] = "ValueError: boom"
            kw["details"] = {"error_type": "ValueError", "error_message": "boom", "error_traceback": None}

        def call() -> Any:
            return self.broker.done(w, job_id, outcome, **kw)

        allowed = self._expect_lease_error(w, job_id, call)
        self._seen(w)
        if allowed:
            r = call()
            assert r.status is outcome
            self._finish(self.model[job_id], outcome)

    @rule(w=st.sampled_from(WORKERS), job_id=jobs, outcome=st.sampled_from(TERMINAL))
    def done_any(self, w: str, job_id: str, outcome: JobStatus) -> None:
        self._done(w, job_id, outcome)

    @precondition(lambda self: any(m.status is S.IN_PROGRESS for m in self.model.values()))
    @rule(data=st.data(), outcome=st.sampled_from(TERMINAL))
    def done_leased(self, data: st.DataObject, outcome: JobStatus) -> None:
        m = data.draw(st.sampled_from(self._running()))
        assert m.worker is not None
        self._done(m.worker, m.id, outcome)

    def _stream(self, w: str, job_id: str, k: int, with_metrics: bool) -> None:
        outputs = [orjson.dumps({"piece": i}) for i in range(k)]
        metrics = [orjson.dumps({"t": i}) if with_metrics else (None if i % 2 else b"{}") for i in range(k)]

        def call() -> Any:
            return self.broker.stream(w, job_id, outputs, metrics)

        allowed = self._expect_lease_error(w, job_id, call)
        self._seen(w)
        if allowed:
            m = self.model[job_id]
            assert call() == m.stream + k
            r = self.broker.jobs[job_id]
            for i, raw in enumerate(r.stream[m.stream :]):
                item = orjson.loads(raw)
                assert item["output"] == {"piece": i}
                expected = {"stream_index": m.stream + i, "scenario": "stream", "attempt": r.attempt}
                if with_metrics:
                    expected["t"] = i
                assert item["metrics"] == expected
            m.stream += k

    @rule(w=st.sampled_from(WORKERS), job_id=jobs, k=st.integers(1, 3), with_metrics=st.booleans())
    def stream_any(self, w: str, job_id: str, k: int, with_metrics: bool) -> None:
        self._stream(w, job_id, k, with_metrics)

    @precondition(lambda self: any(m.status is S.IN_PROGRESS for m in self.model.values()))
    @rule(data=st.data(), k=st.integers(1, 3), with_metrics=st.booleans())
    def stream_leased(self, data: st.DataObject, k: int, with_metrics: bool) -> None:
        m = data.draw(st.sampled_from(self._running()))
        assert m.worker is not None
        self._stream(m.worker, m.id, k, with_metrics)

    @rule(w=st.sampled_from(WORKERS), job_id=jobs)
    def progress(self, w: str, job_id: str) -> None:
        def call() -> Any:
            return self.broker.progress(w, job_id, b'{"pct":50}')

        allowed = self._expect_lease_error(w, job_id, call)
        self._seen(w)
        if allowed:
            call()
            assert self.broker.jobs[job_id].output == b'{"pct":50}'

    @rule(w=st.sampled_from(WORKERS), job_ids=st.lists(jobs, max_size=3))
    def hand_back(self, w: str, job_ids: list[str]) -> None:
        expected = 0
        for job_id in job_ids:
            if self._leased_to(w, job_id):
                m = self.model[job_id]
                m.status, m.worker, m.started, m.resumed = S.IN_QUEUE, None, None, True
                self.workers[w].jobs.discard(job_id)
                expected += 1
        assert self.broker.hand_back(w, job_ids) == expected
        self._seen(w)

    @rule(w=st.sampled_from(WORKERS), named=st.sampled_from(["all", "none", "fresh"]))
    def ping(self, w: str, named: str) -> None:
        mw = self.workers.get(w)
        held = sorted(mw.jobs) if mw is not None else []
        if named == "all":
            ids = held
        elif named == "none":
            ids = []
        else:  # a lagging job list: only the jobs leased since the previous ping are missing
            ids = [j for j in held if mw is not None and (mw.pinged is None or self.model[j].started < mw.pinged)]
        self.broker.ping(w, ids)
        mw = self._seen(w)
        previous, mw.pinged = mw.pinged, self.now[0]
        if previous is not None:
            self._lost(mw, [j for j in mw.jobs if j not in ids and (self.model[j].started or 0) < previous])

    @rule(w=st.sampled_from(WORKERS))
    def stops(self, w: str) -> None:
        ids = self.loop.run_until_complete(self.broker.stops(w, 0.0))
        mw = self._seen(w)
        assert set(ids) == mw.stops
        mw.stops.clear()

    @rule(w=st.sampled_from(WORKERS))
    def leave(self, w: str) -> None:
        self.broker.leave(w)
        if w in self.workers:
            self._leave(w)

    # --- time ------------------------------------------------------------------------------------------------

    def _expire_due(self) -> None:
        now = self.now[0]
        for job_id, m in list(self.model.items()):
            if m.status.terminal:
                assert m.ended is not None
                if m.ended + m.retention <= now:
                    del self.model[job_id]
                    self.gone.add(job_id)
                continue
            due: list[tuple[int, int, str]] = []
            ttl_due = None if m.ttl is None else (m.created if m.ttl_from is None else m.ttl_from) + m.ttl
            if ttl_due is not None and m.ttl_pending and ttl_due <= now:
                due.append((ttl_due, 0, "ttl"))
            if m.status is S.IN_PROGRESS:
                due += [
                    (d, 1, "executionTimeout") for d, started in m.exec_deadlines if d <= now and started == m.started
                ]
            if due:
                self._finish(m, S.TIMED_OUT, stop=True)
                r = self.broker.jobs[job_id]
                assert r.error is not None and r.error.startswith("TimeoutError:") and min(due)[2] in r.error
        for m in self.model.values():
            if m.ttl is not None and (m.created if m.ttl_from is None else m.ttl_from) + m.ttl <= now:
                m.ttl_pending = False
            m.exec_deadlines = [(d, s) for d, s in m.exec_deadlines if d > now]

    def _reap(self) -> None:
        for w, mw in list(self.workers.items()):
            if self.now[0] - mw.last_seen > LEASE_MS:
                self._leave(w)

    @rule(dt=st.sampled_from([0, 1, 50, 99, 100, 101, 500, 999, 1_000, 1_001, 1_600, 2_500, 6_000]),
          order=st.sampled_from(["reap", "expire-then-reap", "reap-then-expire"]))  # fmt: skip
    def advance(self, dt: int, order: str) -> None:
        # Every order ends up reaping: health() reaps too, and the model must not fall behind it.
        self.now[0] += dt
        for step in order.split("-then-"):
            if step == "expire":
                self.broker.expire_due()
                self._expire_due()
            else:
                self.broker.reap()
                self._reap()

    # --- invariants ------------------------------------------------------------------------------------------

    @invariant()
    def every_status_change_is_a_lifecycle_transition(self) -> None:
        current = {i: r.status for i, r in self.broker.jobs.items()}
        for job_id, old in self.statuses.items():
            new = current.get(job_id)
            if new is None:
                assert old is S.IN_QUEUE or old.terminal, f"a {old} job vanished"
            elif new is not old:
                assert new in TRANSITIONS[old], f"{old} -> {new}"
        self.statuses = current

    @invariant()
    def jobs_and_statuses_match_the_model(self) -> None:
        assert set(self.broker.jobs) == set(self.model)
        for job_id, m in self.model.items():
            r = self.broker.jobs[job_id]
            assert r.status is m.status, job_id
            assert r.retries == m.retries
            assert len(r.stream) == m.stream
            if m.status is S.IN_PROGRESS:
                assert r.worker_id == m.worker and r.started == m.started
            if m.status is S.IN_QUEUE:
                assert r.started is None and r.ended is None

    @invariant()
    def counts_match_the_records(self) -> None:
        recount = dict.fromkeys(JobStatus, 0)
        for r in self.broker.jobs.values():
            recount[r.status] += 1
        assert self.broker.counts == recount

    @invariant()
    def health_matches_recomputed_numbers(self) -> None:
        h = self.broker.health()
        statuses = [m.status for m in self.model.values()]
        assert h["jobs"] == {
            "completed": statuses.count(S.COMPLETED),
            "failed": statuses.count(S.FAILED) + statuses.count(S.TIMED_OUT),
            "inProgress": statuses.count(S.IN_PROGRESS),
            "inQueue": statuses.count(S.IN_QUEUE),
            "retried": self.retried,
        }
        running = sum(1 for mw in self.workers.values() if mw.jobs)
        assert h["workers"] == {"idle": len(self.workers) - running, "running": running, "initializing": 0}

    @invariant()
    def finished_jobs_never_change(self) -> None:
        for job_id, m in self.model.items():
            if m.status.terminal:
                assert m.final == fingerprint(self.broker.jobs[job_id])

    @invariant()
    def stream_indexes_are_contiguous_from_zero(self) -> None:
        for r in self.broker.jobs.values():
            for i, raw in enumerate(r.stream):
                metrics = orjson.loads(raw)["metrics"]
                assert metrics["stream_index"] == i and metrics["scenario"] == "stream"
                assert 1 <= metrics["attempt"] <= r.attempt

    @invariant()
    def leases_are_held_only_by_known_workers(self) -> None:
        for w, mw in self.workers.items():
            assert self.broker.workers[w].jobs == mw.jobs
        assert set(self.broker.workers) == set(self.workers)


TestBrokerStateMachine = BrokerMachine.TestCase
TestBrokerStateMachine.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# --- focused examples the machine may take long to find ----------------------------------------------------------


def _broker(now: list[int]) -> Broker:
    return Broker(None, BrokerConfig(lease_ms=LEASE_MS, max_attempts=MAX_ATTEMPTS), clock=lambda: now[0])


def _submit(b: Broker, **policy: Any) -> str:
    return b.submit(RunRequest.model_validate({"input": {}, "policy": policy})).id


async def test_queue_is_fifo_with_low_priority_jobs_after_normal_ones() -> None:
    b = _broker([0])
    low = _submit(b, lowPriority=True)
    first, second = _submit(b), _submit(b)
    taken = await b.take("w", 3)
    assert [r.id for r in taken] == [first, second, low]


async def test_handed_back_and_lost_jobs_queue_again_at_the_front() -> None:
    now = [0]
    b = _broker(now)
    a, c = _submit(b), _submit(b)
    [ra] = await b.take("w1", 1)
    assert b.hand_back("w1", [a]) == 1
    assert [r.id for r in await b.take("w2", 1)] == [a]
    b.leave("w2")
    assert [r.id for r in await b.take("w3", 2)] == [a, c]
    assert ra.retries == 1 and b.retried == 1


def _timed_out_by_ttl(now: list[int], ttl: int, at: int) -> tuple[Broker, str]:
    """A broker whose one job, submitted at 0 with ``ttl``, ran out of it in the queue by ``at``."""
    b = _broker(now)
    job = _submit(b, ttl=ttl)
    now[0] = at
    b.expire_due()
    assert b.jobs[job].status is S.TIMED_OUT
    return b, job


async def test_a_retried_job_gets_its_whole_ttl_again_and_an_earlier_deadline_no_longer_applies() -> None:
    now = [0]
    b, job = _timed_out_by_ttl(now, ttl=100, at=150)
    b.retry(job)  # at 150: due at 250
    now[0] = 240
    b.expire_due()
    assert b.jobs[job].status is S.IN_QUEUE
    now[0] = 250
    b.expire_due()
    assert b.jobs[job].status is S.TIMED_OUT and "ttl" in (b.jobs[job].error or "")
    # Failed early, retried later: its first deadline (350) passes without effect, the new one (300 + 100) holds.
    early = _submit(b, ttl=100)  # at 250: due at 350
    [_] = await b.take("w", 1)
    b.done("w", early, S.FAILED, error="boom")
    now[0] = 300
    b.retry(early)  # due at 400
    now[0] = 399
    b.expire_due()
    assert b.jobs[early].status is S.IN_QUEUE
    now[0] = 400
    b.expire_due()
    assert b.jobs[early].status is S.TIMED_OUT


async def test_purge_after_a_queued_ttl_timeout_and_retry_removes_the_job_once() -> None:
    b, job = _timed_out_by_ttl([0], ttl=10, at=20)
    b.retry(job)
    assert b.purge() == 1
    assert job not in b.jobs
    assert b.health()["jobs"]["inQueue"] == 0


async def test_purge_skips_a_queued_job_that_was_cancelled_and_has_expired() -> None:
    now = [0]
    b = _broker(now)
    cancelled, queued = _submit(b), _submit(b)
    b.cancel(cancelled)
    now[0] += b.cfg.run_retention_ms
    b.expire_due()
    assert cancelled not in b.jobs
    assert b.purge() == 1
    assert b.jobs == {}
    assert queued not in b.jobs


async def test_purge_removes_only_queued_jobs() -> None:
    b = _broker([0])
    running, done, queued = _submit(b), _submit(b), _submit(b)
    await b.take("w", 2)
    b.done("w", done, S.COMPLETED, output=b"1")
    assert b.purge() == 1
    assert set(b.jobs) == {running, done}
    with pytest.raises(NotFound):
        b.status(queued)
    assert b.health()["jobs"] | {"retried": 0} == {
        "completed": 1, "failed": 0, "inProgress": 1, "inQueue": 0, "retried": 0,
    }  # fmt: skip


async def test_take_with_wait_returns_a_job_submitted_while_it_waits() -> None:
    b = _broker([0])
    waiter = asyncio.ensure_future(b.take("w", 1, wait=5.0))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    job = _submit(b)
    taken = await asyncio.wait_for(waiter, 5)
    assert [r.id for r in taken] == [job]


async def test_stops_wait_returns_when_a_running_job_is_cancelled() -> None:
    b = _broker([0])
    job = _submit(b)
    await b.take("w", 1)
    waiter = asyncio.ensure_future(b.stops("w", wait=5.0))
    await asyncio.sleep(0.01)
    b.cancel(job)
    assert await asyncio.wait_for(waiter, 5) == [job]


def test_a_job_lost_by_same_id_restarts_fails_at_max_attempts_in_the_take_that_loses_it() -> None:
    """The sequence hypothesis found: the model must read the record only after the take that ends the job."""
    s = BrokerMachine()
    s.submit(exec_timeout=None, low=False, sync=False, ttl=None)
    s.take(busy=None, n=1, w="w1")
    s.leave(w="w1")
    s.take(busy=None, n=1, w="w1")
    s.take(busy=False, n=1, w="w1")
    s.take(busy=False, n=1, w="w1")
    [r] = s.broker.jobs.values()
    assert r.status is S.FAILED and r.retries == MAX_ATTEMPTS
    s.counts_match_the_records()
    s.finished_jobs_never_change()
    s.teardown()
