"""The Batcher on a hand-driven clock: how batches form and how each job of a batch ends.

No sleeps: the clock is a ManualClock (``time`` and ``call_at``, the part of an event loop the batcher uses), the
handlers are async and "run" until the clock passes their end, and the driver below plays the worker's part: it
takes jobs from a queue up to ``Batcher.free()``, awaits each job's ticket in a task of its own, and cancels
those tasks as the endpoint's job-stop would.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import itertools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from handler_sdk import ConfigError, File, Job, handler
from handler_sdk.batching import Batcher, Ticket
from handler_sdk.handler import Handler
from handler_sdk.models import JobStatus
from handler_sdk.runner import Outcome
from handler_sdk.threads import ElasticPool

S = JobStatus


# --- the clock and the driver ------------------------------------------------------------------------------


@dataclass(order=True)
class _Timer:
    when: float
    seq: int
    callback: Callable[[], object] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """Time moves only when the test says so; timers fire, in order, as it passes them."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[_Timer] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> _Timer:
        t = _Timer(when, next(self._seq), callback)
        heapq.heappush(self._heap, t)
        return t

    def next_due(self) -> float | None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0].when if self._heap else None

    def advance_to(self, t: float) -> None:
        while (due := self.next_due()) is not None and due <= t:
            timer = heapq.heappop(self._heap)
            self.now = max(self.now, timer.when)
            timer.callback()
        self.now = max(self.now, t)

    def sleep(self, seconds: float) -> asyncio.Future[None]:
        """A future the clock resolves ``seconds`` from now: a handler's run time."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.call_at(self.now + seconds, lambda: fut.done() or fut.set_result(None))
        return fut


async def settle() -> None:
    """Let every task that can run, run (the clock stands still meanwhile)."""
    for _ in range(8):
        await asyncio.sleep(0)


async def at(clock: ManualClock, t: float) -> None:
    """Move the clock to ``t``, with every task settled before and after."""
    await settle()
    clock.advance_to(t)
    await settle()


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    # A loop of our own: hypothesis calls this many times, and pytest-asyncio's loop must stay the current one.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        left = asyncio.all_tasks(loop)
        for t in left:
            t.cancel()
        if left:
            loop.run_until_complete(asyncio.wait(left))
        loop.close()


@dataclass
class Taken:
    ticket: Ticket
    at: float
    task: asyncio.Task[Outcome]


def make_job(job_id: str, inp: Any) -> Job:
    return Job({"id": job_id, "input": inp})


def batcher(h: Handler, clock: ManualClock, limit: int = 1) -> tuple[Batcher, list[tuple[float, list[str]]]]:
    b = Batcher(h, ElasticPool(), limit=lambda: limit, clock=clock)
    starts: list[tuple[float, list[str]]] = []
    b.on_start = lambda jobs, now: starts.append((now, [j.id for j in jobs]))
    return b, starts


def take(b: Batcher, clock: ManualClock, job_id: str, inp: Any, timeout: float | None = None) -> Taken:
    t = b.add(make_job(job_id, inp), timeout)
    return Taken(t, clock.time(), asyncio.get_running_loop().create_task(b.result(t)))


def output(o: Outcome) -> Any:
    assert o.output is not None, o
    return orjson.loads(o.output)


# --- the property ------------------------------------------------------------------------------------------

KINDS = ("ok", "ok", "ok", "ok", "exception", "error_dict", "raise", "short")


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 40))
    # Bursts (gaps of 0) come in one take, as many jobs queued at once do.
    gaps = draw(st.lists(st.just(0.0) | st.floats(0, 0.03), min_size=n, max_size=n))
    arrivals = list(itertools.accumulate(gaps))
    jobs = []
    for i, at in enumerate(arrivals):
        cancel = draw(st.none() | st.floats(0, 0.1))
        timeout = draw(st.none() | st.floats(0.001, 0.15))
        kind = draw(st.sampled_from(KINDS))
        jobs.append({"id": f"j{i}", "at": at, "kind": kind, "cancel": cancel, "timeout": timeout})
    return {
        "size": draw(st.integers(1, 8)),
        "wait": draw(st.floats(0, 0.05)),
        "limit": draw(st.integers(1, 3)),
        "base": draw(st.floats(0.001, 0.04)),
        "per_item": draw(st.floats(0, 0.005)),
        "jobs": jobs,
    }


def batch_handler(sc: dict[str, Any], clock: ManualClock, ran: list[tuple[float, list[str]]]) -> Handler:
    """Runs base + per_item x n seconds of the clock; each job's input says what its item is."""

    @handler(batch_size=sc["size"], batch_wait_ms=sc["wait"] * 1000, concurrency=sc["limit"])
    async def fn(jobs: list[Job]) -> list[Any]:
        await clock.sleep(sc["base"] + sc["per_item"] * len(jobs))
        ran.append((clock.time(), [j.id for j in jobs]))
        kinds = [j.input["kind"] for j in jobs]
        if "raise" in kinds:
            raise RuntimeError("the whole batch failed")
        outs = [ITEMS[j.input["kind"]](j.id) for j in jobs]
        return outs[:-1] if "short" in kinds else outs

    return fn


ITEMS: dict[str, Callable[[str], Any]] = {
    "ok": lambda i: {"id": i},
    "exception": lambda i: ValueError(f"bad {i}"),
    "error_dict": lambda i: {"error": f"no {i}"},
    "raise": lambda i: {"id": i},
    "short": lambda i: {"id": i},
}


class Sim:
    """The worker's part around a Batcher: an endpoint queue, takes up to free(), a task per job, cancels."""

    def __init__(self, sc: dict[str, Any]) -> None:
        self.sc = sc
        self.clock = ManualClock()
        self.ran: list[tuple[float, list[str]]] = []  # (end, ids) of each batch the handler finished
        self.b, self.starts = batcher(batch_handler(sc, self.clock, self.ran), self.clock, sc["limit"])
        self.spec = {j["id"]: j for j in sc["jobs"]}
        self.arrivals = sorted(sc["jobs"], key=lambda j: j["at"])
        self.cancels = sorted((j["at"] + j["cancel"], j["id"]) for j in sc["jobs"] if j["cancel"] is not None)
        self.queue: list[str] = []  # arrived, not yet taken
        self.taken: dict[str, Taken] = {}
        self.cancelled_in_queue: set[str] = set()
        self.cancelled_taken: set[str] = set()
        self.done_at: dict[str, float] = {}

    def take_what_fits(self) -> None:
        # As the worker does: ask for free() jobs, then add all that one take brought.
        while self.queue and (n := self.b.free()) > 0:
            got, self.queue[:n] = self.queue[:n], []
            for job_id in got:
                tk = take(self.b, self.clock, job_id, {"kind": self.spec[job_id]["kind"]}, self.spec[job_id]["timeout"])
                tk.task.add_done_callback(lambda _t, i=job_id: self.done_at.setdefault(i, self.clock.time()))
                self.taken[job_id] = tk

    def cancel(self, job_id: str) -> None:
        if job_id in self.queue:
            self.queue.remove(job_id)
            self.cancelled_in_queue.add(job_id)
        elif job_id in self.taken and not self.taken[job_id].task.done():
            self.taken[job_id].task.cancel()
            self.cancelled_taken.add(job_id)

    async def play(self) -> None:
        while True:
            await settle()
            self.take_what_fits()
            await settle()
            nexts = [self.arrivals[0]["at"]] if self.arrivals else []
            nexts += [self.cancels[0][0]] if self.cancels else []
            if (due := self.clock.next_due()) is not None:
                nexts.append(due)
            if not nexts:
                return
            now = min(nexts)
            self.clock.advance_to(now)
            while self.arrivals and self.arrivals[0]["at"] <= now:
                self.queue.append(self.arrivals.pop(0)["id"])
            while self.cancels and self.cancels[0][0] <= now:
                self.cancel(self.cancels.pop(0)[1])

    def check(self) -> None:
        # Everything has ended: nothing waits, nothing runs, every job was taken or cancelled in the queue.
        assert not self.queue and self.b.waiting == 0 and self.b.batches == 0
        assert set(self.taken) | self.cancelled_in_queue == set(self.spec)
        assert not set(self.taken) & self.cancelled_in_queue
        # No batch is over batch_size, and no job is in two.
        seen = [job_id for _, ids in self.starts for job_id in ids]
        assert len(seen) == len(set(seen))
        assert all(1 <= len(ids) <= self.sc["size"] for _, ids in self.starts)
        for job_id in self.taken:
            self.check_job(job_id)

    def check_job(self, job_id: str) -> None:
        tk, spec = self.taken[job_id], self.spec[job_id]
        batch = next(((start, ids) for start, ids in self.starts if job_id in ids), None)
        ended = next((end for end, ids in self.ran if job_id in ids), None)
        assert tk.task.done()
        if batch is not None:
            # Taken only while there is room for its batch, a job waits batch_wait_ms at most (a bound tighter
            # than batch_wait_ms plus one batch's run time); a full batch starts at once.
            assert batch[0] - tk.at <= self.sc["wait"] + 1e-9, (job_id, batch[0], tk.at)
        if tk.task.cancelled():
            assert job_id in self.cancelled_taken  # only the jobs we cancelled end without an outcome
            return
        o = tk.task.result()
        deadline = None if spec["timeout"] is None else tk.at + spec["timeout"]
        if o.status is S.TIMED_OUT:
            assert deadline is not None and self.done_at[job_id] == pytest.approx(deadline)
            assert ended is None or ended >= deadline - 1e-9
            return
        # An outcome from its batch, before its deadline, made from its own item (or from its batch's failure).
        assert batch is not None and ended is not None, job_id
        assert deadline is None or ended <= deadline + 1e-9
        assert spec["cancel"] is None or spec["at"] + spec["cancel"] >= ended - 1e-9
        kinds = [self.spec[i]["kind"] for i in batch[1]]
        if "raise" in kinds:
            assert (o.status, o.error) == (S.FAILED, "RuntimeError: the whole batch failed")
        elif "short" in kinds:
            assert o.status is S.FAILED and o.error is not None
            assert f"returned {len(kinds) - 1} outputs for a batch of {len(kinds)} jobs" in o.error
        elif spec["kind"] == "exception":
            assert (o.status, o.error) == (S.FAILED, f"ValueError: bad {job_id}")
        elif spec["kind"] == "error_dict":
            assert (o.status, o.error) == (S.FAILED, f"HandlerError: no {job_id}")
        else:
            assert (o.status, output(o)) == (S.COMPLETED, {"id": job_id})


async def play(sc: dict[str, Any]) -> None:
    sim = Sim(sc)
    await sim.play()
    sim.check()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_every_job_ends_once_with_its_own_outcome_in_batches_within_size_and_wait(sc: dict[str, Any]) -> None:
    run(play(sc))


# --- how batches form --------------------------------------------------------------------------------------


def echo(size: int, wait_ms: float, clock: ManualClock, run_s: float = 0.01, **kw: Any) -> Handler:
    @handler(batch_size=size, batch_wait_ms=wait_ms, **kw)
    async def fn(jobs: list[Job]) -> list[Any]:
        await clock.sleep(run_s)
        return [{"id": j.id, "n": len(jobs)} for j in jobs]

    return fn


def test_a_full_batch_starts_at_once_and_a_partial_one_after_batch_wait_ms() -> None:
    async def go() -> None:
        clock = ManualClock()
        b, starts = batcher(echo(3, 20, clock), clock, limit=2)
        t = [take(b, clock, f"j{i}", {}) for i in range(4)]
        assert starts == [(0.0, ["j0", "j1", "j2"])]  # the third job filled it: no wait
        await at(clock, 0.0199)
        assert len(starts) == 1
        await at(clock, 0.02)
        assert starts[1] == (0.02, ["j3"])  # the lone fourth job, batch_wait_ms after it was taken
        await at(clock, 1)
        assert [output(x.task.result())["n"] for x in t] == [3, 3, 3, 1]

    run(go())


def test_flush_starts_the_waiting_batch_at_once_as_the_worker_drains() -> None:
    async def go() -> None:
        clock = ManualClock()
        b, starts = batcher(echo(4, 1000, clock), clock)
        t = [take(b, clock, f"j{i}", {}) for i in range(2)]
        await at(clock, 0.001)
        assert starts == []
        b.flush()
        assert starts == [(0.001, ["j0", "j1"])]
        late = take(b, clock, "late", {})  # from a take that was in flight: starts as soon as the slot frees
        await at(clock, 0.02)
        assert starts[1][1] == ["late"]
        await at(clock, 1)
        assert [output(x.task.result())["n"] for x in [*t, late]] == [2, 2, 1]

    run(go())


def test_free_counts_room_in_batches_so_concurrency_counts_batches() -> None:
    async def go() -> None:
        clock = ManualClock()
        b, _ = batcher(echo(4, 10, clock, run_s=0.05), clock, limit=2)
        assert b.free() == 8  # concurrency 2 x batch_size 4
        for i in range(6):
            take(b, clock, f"j{i}", {})
        assert (b.batches, b.waiting, b.free()) == (1, 2, 2)
        await at(clock, 0.01)
        assert (b.batches, b.waiting, b.free()) == (2, 0, 0)  # two batches run at once: 6 jobs, not 2
        await at(clock, 0.055)
        assert (b.batches, b.free()) == (1, 4)
        await at(clock, 0.065)
        assert (b.batches, b.free()) == (0, 8)

    run(go())


def test_a_job_timeout_ends_that_job_alone_and_its_late_output_is_dropped() -> None:
    async def go() -> None:
        clock = ManualClock()
        b, _ = batcher(echo(2, 10, clock, run_s=0.1), clock)
        slow = take(b, clock, "slow", {}, timeout=0.05)
        other = take(b, clock, "other", {})
        await at(clock, 0.05)
        o = slow.task.result()
        assert o.status is S.TIMED_OUT and o.error == "TimeoutError: job exceeded its 0.05 s execution timeout"
        assert slow.ticket.job.cancelled  # a sync handler can see it and skip the job
        assert not other.task.done() and b.batches == 1
        await at(clock, 0.1)
        assert output(other.task.result()) == {"id": "other", "n": 2}

    run(go())


def test_a_job_cancelled_while_waiting_leaves_the_batch_before_it_starts() -> None:
    async def go() -> None:
        clock = ManualClock()
        b, starts = batcher(echo(4, 10, clock), clock)
        gone, _ = take(b, clock, "gone", {}), take(b, clock, "stays", {})
        await at(clock, 0.005)
        gone.task.cancel()
        await settle()
        assert gone.ticket.job.cancelled and b.waiting == 1
        await at(clock, 0.01)
        assert starts == [(0.01, ["stays"])]

    run(go())


def test_cancelling_every_job_of_a_running_batch_stops_it_and_frees_its_slot() -> None:
    async def go() -> None:
        clock = ManualClock()
        stopped = []

        @handler(batch_size=2, batch_wait_ms=0)
        async def fn(jobs: list[Job]) -> list[Any]:
            try:
                await clock.sleep(10)
            except asyncio.CancelledError:
                stopped.append([j.id for j in jobs])
                raise
            return [None for _ in jobs]

        b, _ = batcher(fn, clock)
        a, c = take(b, clock, "a", {}), take(b, clock, "c", {})
        await at(clock, 0)
        a.task.cancel()
        await settle()
        assert b.batches == 1 and not stopped  # one job of the batch still wants its output
        c.task.cancel()
        await settle()
        assert stopped == [["a", "c"]] and b.batches == 0 and b.free() == 2

    run(go())


class Item(BaseModel):
    n: int


def test_input_model_from_a_list_parameter_validates_each_job_alone() -> None:
    async def go() -> None:
        clock = ManualClock()
        got: list[Any] = []

        @handler(batch_size=3, batch_wait_ms=10)
        async def fn(items: list[Item]) -> list[Any]:
            got.append(items)
            return [{"double": i.n * 2} for i in items]

        assert fn.input_model is Item and fn.takes_model
        b, _ = batcher(fn, clock)
        good, bad, good2 = (take(b, clock, i, {"n": n}) for i, n in (("a", 1), ("b", "x"), ("c", 3)))
        await settle()
        o = bad.task.result()
        assert o.status is S.FAILED and o.error is not None and o.error.startswith("InvalidInput: invalid input: n:")
        assert b.waiting == 2  # the invalid job never entered the batch
        await at(clock, 0.01)
        assert got == [[Item(n=1), Item(n=3)]]
        assert output(good.task.result()) == {"double": 2} and output(good2.task.result()) == {"double": 6}

    run(go())


@pytest.mark.parametrize(
    ("returns", "message"),
    [
        ({"not": "a list"}, "a batched handler must return a list of 2 outputs (one per job, in order), got dict"),
        ([1, 2, 3], "the batched handler returned 3 outputs for a batch of 2 jobs"),
        (None, "got NoneType"),
    ],
)
def test_a_return_that_is_not_one_output_per_job_fails_every_job_saying_so(returns: Any, message: str) -> None:
    async def go() -> None:
        clock = ManualClock()

        @handler(batch_size=2, batch_wait_ms=0)
        async def fn(jobs: list[Job]) -> Any:
            return returns

        b, _ = batcher(fn, clock)
        t = [take(b, clock, "a", {}), take(b, clock, "b", {})]
        await at(clock, 0)
        for x in t:
            o = x.task.result()
            assert o.status is S.FAILED and o.error is not None and message in o.error

    run(go())


def test_an_unserializable_or_none_item_affects_only_its_own_job() -> None:
    async def go() -> None:
        clock = ManualClock()

        @handler(batch_size=3, batch_wait_ms=0)
        async def fn(jobs: list[Job]) -> list[Any]:
            return [object(), None, {"refresh_worker": True, "x": 1}]

        b, _ = batcher(fn, clock)
        t = [take(b, clock, f"j{i}", {}) for i in range(3)]
        await at(clock, 0)
        bad, empty, refresh = (x.task.result() for x in t)
        assert bad.status is S.FAILED and bad.error is not None and bad.error.startswith("OutputNotSerializable")
        assert (empty.status, empty.output) == (S.COMPLETED, None)
        assert refresh.refresh_worker and output(refresh) == {"x": 1}

    run(go())


def test_a_file_in_an_item_becomes_its_own_jobs_output() -> None:
    async def go() -> None:
        clock = ManualClock()

        @handler(batch_size=2, batch_wait_ms=0)
        async def fn(jobs: list[Job]) -> list[Any]:
            return [File(j.id.encode(), content_type="text/plain") for j in jobs]

        b, _ = batcher(fn, clock)
        t = [take(b, clock, f"j{i}", {}) for i in range(2)]
        await at(clock, 0)
        # No bucket configured: each File is inlined into its own job's output.
        outs = await asyncio.wait_for(asyncio.gather(*(x.task for x in t)), 10)  # inlining runs in a thread
        got = [base64.b64decode(output(o)["data_base64"]) for o in outs]
        assert got == [b"j0", b"j1"]

    run(go())


async def test_a_sync_batched_handler_runs_in_a_pool_thread() -> None:
    import threading

    main = threading.get_ident()

    @handler(batch_size=2, batch_wait_ms=0)
    def fn(jobs: list[Job]) -> list[Any]:
        return [threading.get_ident() != main for _ in jobs]

    b = Batcher(fn, ElasticPool())
    t = [b.add(make_job(f"j{i}", {})) for i in range(2)]
    assert [output(await b.result(x)) for x in t] == [True, True]


# --- the decorator -----------------------------------------------------------------------------------------


def test_a_generator_is_refused_at_decoration_time() -> None:
    with pytest.raises(ConfigError, match="generators are not batched"):

        @handler(batch_size=4)
        def gen(jobs: list[Job]) -> Any:
            yield jobs

    with pytest.raises(ConfigError, match="generators are not batched"):

        @handler(batch_size=4)
        async def agen(jobs: list[Job]) -> Any:
            yield jobs


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
        ({"batch_size": True}, "batch_size must be an int >= 1"),
        ({"batch_size": 2.0}, "batch_size must be an int >= 1"),
        ({"batch_size": 4, "batch_wait_ms": -1}, "batch_wait_ms must be a number"),
        ({"batch_size": 4, "batch_wait_ms": float("inf")}, "batch_wait_ms must be a number"),
        ({"batch_wait_ms": 5}, "batch_wait_ms needs batch_size"),
    ],
)
def test_bad_batch_options_are_refused_at_decoration_time(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        handler(**kw)(lambda jobs: jobs)


def test_batch_wait_ms_defaults_to_10_and_an_unbatched_handler_is_not_batched() -> None:
    assert handler(batch_size=8)(lambda jobs: jobs).batch_wait_ms == 10
    plain = handler(lambda job: job)
    assert not plain.batched and plain.batch_size is None


def test_a_batched_handler_annotated_with_a_single_model_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"annotate its parameter list\[Item\]"):

        @handler(batch_size=4)
        def fn(item: Item) -> Any:
            return item
