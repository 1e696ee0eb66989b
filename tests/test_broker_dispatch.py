"""How the broker hands jobs to a worker in its own process (``Broker.attach_local``) without a take round trip.

A hypothesis state machine submits jobs of both priorities, finishes them, changes the local worker's free slots,
attaches and detaches it, and lets a remote worker take too. Whoever gets a job, it is always the one the queue
owes next (normal priority first, each priority in submission order), the local worker never gets more jobs than
it said it had room for, and no job waits in the queue while an attached local worker has room.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from handler_sdk import handler
from handler_sdk.models import JobStatus, Policy, RunRequest
from handler_sdk.serve.inprocess import InProcessTransport
from handler_sdk.serve.state.broker import Broker, new_job_id
from handler_sdk.serve.state.queue import JobQueue
from handler_sdk.serve.state.record import JobRecord, wait_terminal
from handler_sdk.worker.loop import Worker, WorkerConfig

S = JobStatus


class Local:
    """The worker side of the push interface, as the in-process transport implements it."""

    worker_id = "local"

    def __init__(self, machine: DispatchMachine) -> None:
        self.m = machine
        self.slots = 1
        self.running: list[str] = []

    def free(self) -> int:
        return max(0, self.slots - len(self.running))

    def start(self, records: list[JobRecord]) -> None:
        assert 0 < len(records) <= self.free(), "started more jobs than the worker had room for"
        for r in records:
            assert r.status is S.IN_PROGRESS and r.worker_id == "local", "pushed a job not leased to the worker"
            self.m.leased(r.id)
            self.running.append(r.id)


class DispatchMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.broker = Broker()
        self.local = Local(self)
        self.attached = False
        self.queued: list[tuple[bool, int, str]] = []  # (low, seq, id), the order the queue owes them
        self.seq = 0
        self.remote: list[str] = []
        self.submitting: tuple[bool, int] | None = None
        self.pushed_at_submit: str | None = None

    def teardown(self) -> None:
        self.loop.close()

    def leased(self, job_id: str) -> None:
        # A job pushed while submit() runs is not in the model's queue yet: it is the one being submitted.
        new = [(*self.submitting, job_id)] if self.submitting and job_id not in {q[2] for q in self.queued} else []
        owed = min(self.queued + new)
        assert owed[2] == job_id, f"leased {job_id} while {owed[2]} was owed first"
        if new:
            self.submitting = None
            self.pushed_at_submit = job_id
        else:
            self.queued.remove(owed)

    @rule(low=st.booleans())
    def submit(self, low: bool) -> None:
        self.seq += 1
        self.submitting, self.pushed_at_submit = (low, self.seq), None
        r = self.broker.submit(RunRequest(input={"n": self.seq}, policy=Policy(lowPriority=low)))
        if self.pushed_at_submit == r.id:
            assert r.status is S.IN_PROGRESS
        else:
            assert r.status is S.IN_QUEUE
            self.queued.append((low, self.seq, r.id))
        self.submitting = None

    @precondition(lambda self: self.local.running)
    @rule(data=st.data())
    def local_job_ends(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.local.running))
        # The worker frees its slot before it reports, and leaves the slot to done(): the broker offers it once
        # the result is recorded (the invariant below fails if done() does not).
        self.local.running.remove(job_id)
        self.broker.done("local", job_id, S.COMPLETED, output=b"1")

    @rule(slots=st.integers(0, 3))
    def resize(self, slots: int) -> None:
        self.local.slots = slots
        self.broker.dispatch()

    @precondition(lambda self: not self.attached)
    @rule()
    def attach(self) -> None:
        self.attached = True
        self.broker.attach_local(self.local)

    @precondition(lambda self: self.attached)
    @rule()
    def detach(self) -> None:
        self.attached = False
        self.broker.detach_local(self.local)

    @rule(n=st.integers(1, 3))
    def remote_take(self, n: int) -> None:
        taken = self.loop.run_until_complete(self.broker.take("remote", n))
        for r in taken:
            self.leased(r.id)
            self.remote.append(r.id)

    @invariant()
    def no_job_waits_while_the_local_worker_has_room(self) -> None:
        if self.attached and self.local.free() > 0:
            assert not self.queued, "jobs stayed queued while the attached local worker had free slots"

    @invariant()
    def broker_counts_agree(self) -> None:
        h = self.broker.health()["jobs"]
        assert h["inQueue"] == len(self.queued)
        assert h["inProgress"] == len(self.local.running) + len(self.remote)


TestDispatch = DispatchMachine.TestCase
TestDispatch.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_job_ids_are_distinct_version_4_uuids() -> None:
    ids = [new_job_id() for _ in range(5000)]  # more than one 16 KiB batch of randomness
    assert len(set(ids)) == len(ids)
    for i in ids[::97]:
        u = uuid.UUID(i)
        assert str(u) == i and u.version == 4 and u.variant == uuid.RFC_4122


def test_a_finished_runsync_record_drops_its_input_but_a_failed_one_keeps_it_for_retry() -> None:
    async def go() -> None:
        b = Broker()
        ok = b.submit(RunRequest(input={"a": 1}), sync=True)
        bad = b.submit(RunRequest(input={"b": 2}), sync=True)
        await b.take("w", 2)
        b.done("w", ok.id, S.COMPLETED, output=b"1")
        b.done("w", bad.id, S.FAILED, error="boom")
        assert ok.input is None
        assert bad.input == {"b": 2}
        b.retry(bad.id)
        [again] = await b.take("w", 1)
        assert again.input == {"b": 2}

    asyncio.run(go())


def test_a_runsync_waiter_returns_when_its_job_is_purged() -> None:
    async def go() -> None:
        b = Broker()
        r = b.submit(RunRequest(input={}), sync=True)
        waiter = asyncio.create_task(wait_terminal(r, 30, b.jobs))
        await asyncio.sleep(0)
        assert b.purge() == 1
        async with asyncio.timeout(1):
            await waiter
        assert r.waiters is None  # the waiter is gone with its wait

    asyncio.run(go())


def test_a_wait_on_a_job_purged_before_it_began_returns_at_once() -> None:
    async def go() -> None:
        b = Broker()
        r = b.submit(RunRequest(input={}), sync=True)
        assert b.purge() == 1  # before anyone waits: its wake-up has gone by
        async with asyncio.timeout(1):
            await wait_terminal(r, 30, b.jobs)
        assert r.waiters is None

    asyncio.run(go())


async def test_the_in_process_worker_starts_the_next_job_only_after_the_last_ones_end_is_recorded() -> None:
    """Concurrency 1 through the real worker and in-process transport. The clock ticks on every reading, so a
    next job leased in the same millisecond as its predecessor's end, but before that end was recorded, shows."""
    ticks = itertools.count(1)
    broker = Broker(clock=lambda: next(ticks))

    @handler
    def echo(job):  # type: ignore[no-untyped-def]
        return job.input

    transport = InProcessTransport(broker, "local", hold_s=0.05)
    worker = Worker(echo, transport, WorkerConfig(ping_interval_s=60))
    records = [broker.submit(RunRequest(input={"n": n})) for n in range(4)]
    run = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            for r in records:
                await wait_terminal(r, float("inf"), broker.jobs)
    finally:
        worker.stop()
        await asyncio.gather(run, return_exceptions=True)
        await transport.close()
    assert [r.status for r in records] == [S.COMPLETED] * 4
    for before, after in itertools.pairwise(records):
        assert before.ended is not None and after.started is not None
        assert after.started > before.ended, f"{after.id} started at {after.started}, before {before.ended}"


def test_a_hand_back_naming_a_job_twice_queues_it_again_once() -> None:
    async def go() -> None:
        b = Broker()
        r = b.submit(RunRequest(input={}))
        assert await b.take("w", 1) == [r]
        assert b.hand_back("w", [r.id, r.id, "unknown"]) == 1
        assert r.status is S.IN_QUEUE and b.health()["jobs"]["inQueue"] == 1
        assert await b.take("w2", 2) == [r], "queued once, not twice"

    asyncio.run(go())


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.booleans()), max_size=30),  # (low priority, still queued) per job
    st.integers(min_value=1, max_value=40),
)
def test_pop_many_takes_the_next_queued_jobs_in_order_and_skips_stale_ids(
    jobs: list[tuple[bool, bool]], n: int
) -> None:
    q = JobQueue()
    records: dict[str, JobRecord] = {}
    for i, (low, queued) in enumerate(jobs):
        r = JobRecord(f"job-{i}", None, 0, low_priority=low)
        if not queued:
            r.status = S.CANCELLED  # ended while queued: its id stays in the queue, stale
        records[r.id] = r
        q.add(r)
    owed = [r for r in records.values() if not r.low_priority and r.status is S.IN_QUEUE]
    owed += [r for r in records.values() if r.low_priority and r.status is S.IN_QUEUE]
    assert q.pop_many(records, n) == owed[:n]
    assert q.pop_many(records, len(jobs) + 1) == owed[n:]
    assert not q
