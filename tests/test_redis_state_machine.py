"""Two engines (two replicas, separate connections) on one real redis-server, driven by random interleavings of
submit, take (held or not), stream, done, cancel, retry, purge and lease lapse (a fake clock), against a model.

After every step: each record's status equals the model's, a status moved only along lifecycle.TRANSITIONS (whose
two moves back are the lapsed lease and /retry), every result the lease holder sent is the one recorded, each
lapsed lease was requeued exactly once, the /health counts equal the records, and the idle and woken takers are
attached workers, with their wake channels and free slots counted. And whatever came before, a job submitted
reaches a take waiting for it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from redis_engine import Clock, new_endpoint
from redis_server import RedisServer

from handler_sdk.errors import Conflict, NotFound
from handler_sdk.lifecycle import TRANSITIONS
from handler_sdk.models import JobStatus as S
from handler_sdk.serve.state.redis_client import connect
from handler_sdk.serve.state.redis_jobs import RedisJobs, RedisJobsConfig

LEASE_MS = 1_000
MAX_ATTEMPTS = 3
WORKERS = ("w0", "w1", "w2")
ENDS = (S.COMPLETED, S.FAILED)


@dataclass
class Job:
    status: S = S.IN_QUEUE
    worker: str | None = None
    retries: int = 0
    stream: int = 0
    output: bytes | None = None


class TwoReplicas(RuleBasedStateMachine):
    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        ep = new_endpoint()
        cfg = RedisJobsConfig(lease_ms=LEASE_MS, max_attempts=MAX_ATTEMPTS, run_retention_ms=10**9)
        self.engines = [RedisJobs(connect(self.url), ep, cfg, clock=self.clock) for _ in range(2)]
        for e in self.engines:
            self.run(e.open())
        self.jobs: dict[str, Job] = {}
        self.seen: dict[str, int] = {}  # worker -> last time it talked to a replica
        self.retried = 0
        self.n = 0
        self.observed: dict[str, S] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def race(self, *coros: Any) -> list[Any]:
        """Run the calls at once on this machine's loop: their commands interleave on the two connections."""

        async def together() -> list[Any]:
            return await asyncio.gather(*coros, return_exceptions=True)

        out = self.loop.run_until_complete(together())
        for x in out:
            if isinstance(x, BaseException) and not isinstance(x, Conflict):
                raise x
        return out

    def teardown(self) -> None:
        for e in self.engines:
            self.run(e.close())
            self.run(e.client.aclose())
        self.loop.close()

    def pick(self, i: int) -> str:
        ids = sorted(self.jobs)
        return ids[i % len(ids)]

    def queued(self) -> int:
        return sum(j.status is S.IN_QUEUE for j in self.jobs.values())

    def leased(self, job_id: str, worker: str) -> bool:
        j = self.jobs[job_id]
        return j.status is S.IN_PROGRESS and j.worker == worker

    # --- rules -----------------------------------------------------------------------------------------------

    @rule(r=st.integers(0, 1), low=st.booleans())
    def submit(self, r: int, low: bool) -> None:
        job_id = f"j{self.n}"
        self.n += 1
        self.run(self.engines[r].submit(job_id, b'{"n":%d}' % self.n, low_priority=low))
        self.jobs[job_id] = Job()

    def _took(self, worker: str, taken: list[Any]) -> None:
        self.seen[worker] = self.clock()
        for t in taken:
            j = self.jobs[t.id]
            assert j.status is S.IN_QUEUE, (t.id, j)
            j.status, j.worker = S.IN_PROGRESS, worker

    @rule(r=st.integers(0, 1), w=st.sampled_from(WORKERS), n=st.integers(1, 3))
    def take(self, r: int, w: str, n: int) -> None:
        want = min(n, self.queued())
        taken = self.run(self.engines[r].take(w, n))
        assert len(taken) == want
        self._took(w, taken)

    @rule(r=st.integers(0, 1), w=st.sampled_from(WORKERS), n=st.integers(1, 3))
    def held_take(self, r: int, w: str, n: int) -> None:
        """A take that waits for work: left idle in Redis when it empties the queue, so later submits, requeues
        and retries wake it (or pass the wake on once it is gone), between the other steps."""
        want = min(n, self.queued())
        taken = self.run(self.engines[r].take(w, n, wait=0.02))
        assert len(taken) == want
        self._took(w, taken)

    @precondition(lambda self: self.queued() == 0)
    @rule(r=st.integers(0, 1), s=st.integers(0, 1), w=st.sampled_from(WORKERS))
    def the_next_job_wakes_a_waiting_take_whatever_came_before(self, r: int, s: int, w: str) -> None:
        """Whatever idle takers earlier steps left in Redis (holds ended, watches parked), a job submitted on
        either replica reaches a take waiting on either, passed on as often as it takes: its hold outlasts the
        test, so only a wake can end it."""
        job_id = f"j{self.n}"
        self.n += 1
        c: Any = self.engines[0].client
        p = self.engines[0].prefix

        async def go() -> list[Any]:
            t = asyncio.create_task(self.engines[r].take(w, 1, wait=600))
            for _ in range(1000):
                if await c.hget(p + "idlech", w) == self.engines[r].takes.tag.encode():
                    break
                await asyncio.sleep(0.005)
            await self.engines[s].submit(job_id, b"1")
            return await asyncio.wait_for(t, 10)

        self.jobs[job_id] = Job()
        taken = self.run(go())
        assert [t.id for t in taken] == [job_id]
        self._took(w, taken)

    @rule(n0=st.integers(1, 3), n1=st.integers(1, 3))
    def takes_race_on_both_replicas(self, n0: int, n1: int) -> None:
        queued = self.queued()
        a, b = self.race(self.engines[0].take("w0", n0), self.engines[1].take("w1", n1))
        assert not {t.id for t in a} & {t.id for t in b}
        assert len(a) + len(b) == min(queued, n0 + n1)
        self._took("w0", a)
        self._took("w1", b)

    @precondition(lambda self: self.jobs)
    @rule(r=st.integers(0, 1), w=st.sampled_from(WORKERS), i=st.integers(0, 99))
    def stream(self, r: int, w: str, i: int) -> None:
        job_id = self.pick(i)
        ok = self.leased(job_id, w)
        try:
            n = self.run(self.engines[r].stream(w, job_id, [b'"t"'], [None]))
        except (Conflict, NotFound):
            assert not ok
        else:
            assert ok
            self.jobs[job_id].stream += 1
            assert n == self.jobs[job_id].stream
        self.seen[w] = self.clock()

    @precondition(lambda self: self.jobs)
    @rule(r=st.integers(0, 1), w=st.sampled_from(WORKERS), i=st.integers(0, 99), end=st.sampled_from(ENDS))
    def done(self, r: int, w: str, i: int, end: S) -> None:
        job_id = self.pick(i)
        ok = self.leased(job_id, w)
        out = b'"%s by %s"' % (job_id.encode(), w.encode())
        try:
            self.run(self.engines[r].done(w, job_id, end, output=out))
        except (Conflict, NotFound):
            assert not ok
        else:
            assert ok
            self.jobs[job_id].status, self.jobs[job_id].output = end, out
        self.seen[w] = self.clock()

    @precondition(lambda self: any(j.status is S.IN_PROGRESS for j in self.jobs.values()))
    @rule(i=st.integers(0, 99))
    def done_races_cancel_on_the_other_replica(self, i: int) -> None:
        running = sorted(k for k, j in self.jobs.items() if j.status is S.IN_PROGRESS)
        job_id = running[i % len(running)]
        j = self.jobs[job_id]
        w = j.worker
        assert w is not None
        done, cancel = self.race(
            self.engines[0].done(w, job_id, S.COMPLETED, output=b'"raced"'), self.engines[1].cancel(job_id)
        )
        self.seen[w] = self.clock()
        if isinstance(done, Conflict):
            assert cancel is S.CANCELLED
            j.status = S.CANCELLED
        else:
            assert isinstance(done, tuple) and cancel is S.COMPLETED, (done, cancel)  # (created, started)
            j.status, j.output = S.COMPLETED, b'"raced"'

    @precondition(lambda self: self.jobs)
    @rule(r=st.integers(0, 1), i=st.integers(0, 99))
    def cancel(self, r: int, i: int) -> None:
        job_id = self.pick(i)
        j = self.jobs[job_id]
        got = self.run(self.engines[r].cancel(job_id))
        if not j.status.terminal:
            j.status = S.CANCELLED
        assert got is j.status

    @precondition(lambda self: self.jobs)
    @rule(r=st.integers(0, 1), i=st.integers(0, 99))
    def retry(self, r: int, i: int) -> None:
        job_id = self.pick(i)
        j = self.jobs[job_id]
        try:
            self.run(self.engines[r].retry(job_id))
        except Conflict:
            assert j.status not in (S.FAILED, S.TIMED_OUT)
        else:
            assert j.status in (S.FAILED, S.TIMED_OUT)
            j.status, j.worker, j.retries, j.stream, j.output = S.IN_QUEUE, None, j.retries + 1, 0, None

    @rule(r=st.integers(0, 1))
    def purge(self, r: int) -> None:
        gone = [k for k, j in self.jobs.items() if j.status is S.IN_QUEUE]
        assert self.run(self.engines[r].purge()) == len(gone)
        for k in gone:
            del self.jobs[k]
            self.seen.pop(k, None)

    @rule(r=st.integers(0, 1), w=st.sampled_from(WORKERS))
    def ping(self, r: int, w: str) -> None:
        self.run(self.engines[r].ping(w))
        self.seen[w] = self.clock()

    @rule(ms=st.sampled_from([0, 400, 999, 1_000, 1_500]), r=st.integers(0, 1), both=st.booleans())
    def time_passes(self, ms: int, r: int, both: bool) -> None:
        self.clock.advance(ms)
        now = self.clock()
        ticks = [self.engines[r].tick()] + ([self.engines[1 - r].tick()] if both else [])
        lapsed = sum(k for _, k in self.race(*ticks))
        want = 0
        for w, last in list(self.seen.items()):
            if last + LEASE_MS <= now:
                del self.seen[w]
                for j in self.jobs.values():
                    if j.status is S.IN_PROGRESS and j.worker == w:
                        want += 1
                        j.retries += 1
                        self.retried += 1
                        j.worker, j.output = None, None
                        j.status = S.FAILED if j.retries >= MAX_ATTEMPTS else S.IN_QUEUE
        assert lapsed == want  # each lapsed lease requeued (or failed) once, by one replica

    # --- invariants ------------------------------------------------------------------------------------------

    @invariant()
    def records_match_the_model(self) -> None:
        e = self.engines[self.n % 2]
        for job_id, j in self.jobs.items():
            r = self.run(e.status(job_id))
            assert r is not None, job_id
            assert r.status is j.status, (job_id, r.status, j)
            if j.status is S.IN_PROGRESS:
                assert r.worker_id == j.worker
            if j.status in ENDS:
                assert r.output == j.output, job_id  # the lease holder's result, never lost or overwritten
            assert r.retries == j.retries and r.stream_len == j.stream
            old = self.observed.get(job_id)
            assert old is None or old is j.status or j.status in TRANSITIONS[old], (job_id, old, j.status)
            self.observed[job_id] = j.status

    @invariant()
    def idle_and_woken_takers_are_attached_workers_with_their_slots_counted(self) -> None:
        c: Any = self.engines[0].client
        p = self.engines[0].prefix
        idle = set(self.run(c.zrange(p + "idle", 0, -1)))
        assert idle == set(self.run(c.hkeys(p + "idlech"))) == set(self.run(c.hkeys(p + "idleroom")))
        workers = set(self.run(c.hkeys(p + "workers")))
        assert idle <= workers  # a lapsed worker is idle no more
        # The woken takers not yet asking, and the free slots counted on them.
        awake = self.run(c.hgetall(p + "awakeroom"))
        assert set(self.run(c.zrange(p + "awake", 0, -1))) == set(awake) <= workers
        assert int(self.run(c.get(p + "awroom")) or 0) == sum(int(v) for v in awake.values())

    @invariant()
    def health_counts_equal_the_records(self) -> None:
        h = self.run(self.engines[(self.n + 1) % 2].health())["jobs"]
        by = {s: sum(j.status is s for j in self.jobs.values()) for s in S}
        assert h == {
            "completed": by[S.COMPLETED],
            "failed": by[S.FAILED] + by[S.TIMED_OUT],
            "inProgress": by[S.IN_PROGRESS],
            "inQueue": by[S.IN_QUEUE],
            "retried": self.retried,
        }
        counts = self.run(self.engines[0].counts())
        assert counts.get("CANCELLED", 0) == by[S.CANCELLED]


@pytest.mark.timeout(110)
def test_two_replicas_on_one_redis_agree_with_the_model(redis_server: RedisServer) -> None:
    TwoReplicas.url = redis_server.url
    run_state_machine_as_test(
        TwoReplicas,
        # No shrinking: through redis-server it takes minutes, past the per-test timeout; a failure prints its
        # whole run (at most 40 steps) instead.
        settings=settings(
            max_examples=100,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
        ),
    )
