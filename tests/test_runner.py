"""run_job: the four handler kinds, input validation, errors, limits, timeout and cancel, streaming outcomes."""

import asyncio
import contextvars
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from handler_sdk import Chunk, Final, Handler, JobStatus, handler
from handler_sdk.chunker import MAX_ITEM_OUTPUT, EncodedItem
from handler_sdk.job import Job
from handler_sdk.runner import DEFAULT_RESULT_CAP, Outcome, run_job
from handler_sdk.threads import ElasticPool


class Prompt(BaseModel):
    prompt: str
    n: int = 1


class Run:
    """One job run through run_job, with what it emitted."""

    def __init__(self, h: Handler, input: Any = None, *, pool: ElasticPool | None = None) -> None:
        self.h = h
        self.job = Job({"id": "job-1", "input": {} if input is None else input, "extra": "x"})
        self.items: list[EncodedItem] = []
        self.pool = pool or ElasticPool(idle_timeout=1)

    async def emit(self, item: EncodedItem) -> None:
        self.items.append(item)

    async def __call__(self, *, timeout: float | None = None, result_cap: int = DEFAULT_RESULT_CAP) -> Outcome:
        return await run_job(self.h, self.job, emit=self.emit, pool=self.pool, timeout=timeout, result_cap=result_cap)

    @property
    def outputs(self) -> list[Any]:
        return [orjson.loads(i.output) for i in self.items]


def output(o: Outcome) -> Any:
    assert o.output is not None
    return orjson.loads(o.output)


async def poll(cond: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition never became true")
        await asyncio.sleep(0.01)


# --- the four kinds --------------------------------------------------------------------------------------------


async def test_sync_handler_runs_in_a_pool_thread_and_completes_with_its_return_value() -> None:
    loop_thread = threading.get_ident()

    @handler
    def h(job: Job) -> dict[str, Any]:
        return {"echo": job.input, "on_loop_thread": threading.get_ident() == loop_thread}

    o = await Run(h, {"a": 1})()
    assert o.status is JobStatus.COMPLETED
    assert output(o) == {"echo": {"a": 1}, "on_loop_thread": False}
    assert o.error is None and not o.refresh_worker


async def test_async_handler_completes_with_its_return_value() -> None:
    @handler
    async def h(job: Job) -> list[Any]:
        await asyncio.sleep(0)
        return [job.id, job["input"]]

    o = await Run(h, {"b": 2})()
    assert o.status is JobStatus.COMPLETED
    assert output(o) == ["job-1", {"b": 2}]


async def test_handler_returning_none_completes_without_output() -> None:
    @handler
    async def h(job: Job) -> None:
        return None

    o = await Run(h)()
    assert o.status is JobStatus.COMPLETED and o.output is None


async def test_sync_generator_emits_one_item_per_yield_and_has_no_output_by_default() -> None:
    @handler
    def h(job: Job) -> Iterator[Any]:
        yield from range(job.input["n"])

    run = Run(h, {"n": 4})
    o = await run()
    assert o.status is JobStatus.COMPLETED and o.output is None
    assert run.outputs == [0, 1, 2, 3]


async def test_async_generator_emits_one_item_per_yield() -> None:
    @handler
    async def h(job: Job) -> AsyncIterator[Any]:
        for i in range(3):
            yield {"i": i}

    run = Run(h)
    o = await run()
    assert o.status is JobStatus.COMPLETED and o.output is None
    assert run.outputs == [{"i": 0}, {"i": 1}, {"i": 2}]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_aggregate_stream_output_is_the_list_of_items(kind: str) -> None:
    if kind == "sync":

        def fn(job: Job) -> Iterator[Any]:
            yield "a"
            yield {"b": 1}

    else:

        async def fn(job: Job) -> AsyncIterator[Any]:  # type: ignore[misc]
            yield "a"
            yield {"b": 1}

    run = Run(handler(aggregate_stream=True)(fn))
    o = await run()
    assert output(o) == ["a", {"b": 1}]
    assert run.outputs == ["a", {"b": 1}]


async def test_aggregate_stream_lists_the_pieces_of_a_split_string_as_separate_entries() -> None:
    big = "s" * (MAX_ITEM_OUTPUT + 100)

    @handler(aggregate_stream=True)
    def h(job: Job) -> Iterator[Any]:
        yield big
        yield "tail"

    run = Run(h)
    agg = output(await run())
    assert len(agg) == 3
    assert "".join(agg[:2]) == big and agg[2] == "tail"
    assert run.outputs == agg
    assert all(len(i.output) <= MAX_ITEM_OUTPUT for i in run.items)


async def test_sync_generator_return_value_is_the_final_output() -> None:
    @handler(aggregate_stream=True)
    def h(job: Job) -> Generator[Any, None, dict[str, Any]]:
        yield 1
        return {"total": 1}

    run = Run(h)
    o = await run()
    assert output(o) == {"total": 1}
    assert run.outputs == [1]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_yielding_final_sets_the_output_and_ends_the_stream(kind: str) -> None:
    after: list[bool] = []
    if kind == "sync":

        def fn(job: Job) -> Iterator[Any]:
            yield "x"
            yield Final({"done": True})
            after.append(True)
            yield "never"

    else:

        async def fn(job: Job) -> AsyncIterator[Any]:  # type: ignore[misc]
            yield "x"
            yield Final({"done": True})
            after.append(True)
            yield "never"

    run = Run(handler(aggregate_stream=True)(fn))
    o = await run()
    assert o.status is JobStatus.COMPLETED
    assert output(o) == {"done": True}
    assert run.outputs == ["x"]
    assert after == []


async def test_chunk_attaches_metrics_to_its_item_and_reserved_keys_are_dropped() -> None:
    @handler
    async def h(job: Job) -> AsyncIterator[Any]:
        yield Chunk("tok", {"output_tokens": 1, "stream_index": 42, "scenario": "x"})
        yield "plain"

    run = Run(h)
    await run()
    assert run.outputs == ["tok", "plain"]
    assert run.items[0].metrics is not None and orjson.loads(run.items[0].metrics) == {"output_tokens": 1}
    assert run.items[1].metrics is None


async def test_chunk_metrics_go_with_every_piece_of_a_split_string() -> None:
    @handler
    def h(job: Job) -> Iterator[Any]:
        yield Chunk("m" * (MAX_ITEM_OUTPUT + 1), {"k": 1})

    run = Run(h)
    await run()
    assert len(run.items) == 2
    assert all(i.metrics is not None and orjson.loads(i.metrics) == {"k": 1} for i in run.items)


# --- typed input -----------------------------------------------------------------------------------------------


async def test_input_model_given_as_option_replaces_job_input_with_the_validated_model() -> None:
    seen: list[Any] = []

    @handler(input_model=Prompt)
    def h(job: Job) -> Any:
        seen.append(job.input)
        return job.input.prompt * job.input.n

    o = await Run(h, {"prompt": "ab", "n": 2})()
    assert output(o) == "abab"
    assert isinstance(seen[0], Prompt)


async def test_input_model_inferred_from_the_signature_is_passed_to_the_function() -> None:
    @handler
    async def h(p: Prompt) -> dict[str, Any]:
        return p.model_dump()

    o = await Run(h, {"prompt": "hi"})()
    assert output(o) == {"prompt": "hi", "n": 1}


@pytest.mark.parametrize("how", ["option", "signature"])
async def test_invalid_input_fails_naming_the_fields_and_the_handler_never_runs(how: str) -> None:
    ran: list[bool] = []
    if how == "option":

        @handler(input_model=Prompt)
        def h(job: Job) -> None:
            ran.append(True)

    else:

        @handler
        def h(p: Prompt) -> None:
            ran.append(True)

    o = await Run(h, {"n": "many"})()
    assert o.status is JobStatus.FAILED
    assert o.error is not None
    assert o.error.startswith("InvalidInput: invalid input:")
    assert "prompt" in o.error and "n:" in o.error
    assert o.error_details is not None and o.error_details["error_type"] == "InvalidInput"
    assert ran == []


async def test_non_object_input_fails_validation_cleanly() -> None:
    @handler
    def h(p: Prompt) -> None:
        raise AssertionError("unreachable")

    o = await Run(h, ["not", "an", "object"])()
    assert o.status is JobStatus.FAILED
    assert o.error is not None and "invalid input" in o.error


# --- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sync", [True, False])
async def test_exception_fails_the_job_with_a_string_error_and_structured_details(sync: bool) -> None:
    if sync:

        def fn(job: Job) -> None:
            raise ValueError("boom")

    else:

        async def fn(job: Job) -> None:  # type: ignore[misc]
            raise ValueError("boom")

    o = await Run(handler(fn))()
    assert o.status is JobStatus.FAILED
    assert o.error == "ValueError: boom"
    d = o.error_details
    assert d is not None
    assert d["error_type"] == "ValueError"
    assert d["error_message"] == "boom"
    assert "raise ValueError" in d["error_traceback"] and "ValueError: boom" in d["error_traceback"]


@pytest.mark.parametrize("kind", ["sync", "async_gen"])
async def test_exception_mid_stream_fails_the_job_after_the_items_already_emitted(kind: str) -> None:
    if kind == "sync":

        def fn(job: Job) -> Iterator[Any]:
            yield 1
            raise KeyError("gone")

    else:

        async def fn(job: Job) -> AsyncIterator[Any]:  # type: ignore[misc]
            yield 1
            raise KeyError("gone")

    run = Run(handler(fn))
    o = await run()
    assert o.status is JobStatus.FAILED
    assert o.error == "KeyError: 'gone'"
    assert run.outputs == [1]


@pytest.mark.parametrize(
    ("value", "error"),
    [({"error": "asked to fail"}, "HandlerError: asked to fail"), ({"error": {"code": 7}}, 'HandlerError: {"code":7}')],
)
async def test_returned_error_value_fails_the_job(value: dict[str, Any], error: str) -> None:
    @handler
    def h(job: Job) -> dict[str, Any]:
        return value

    o = await Run(h)()
    assert o.status is JobStatus.FAILED
    assert o.error == error
    assert o.error_details is not None and o.error_details["error_type"] == "HandlerError"


async def test_returned_error_none_is_not_a_failure() -> None:
    @handler
    def h(job: Job) -> dict[str, Any]:
        return {"error": None, "ok": True}

    o = await Run(h)()
    assert o.status is JobStatus.COMPLETED


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_yielded_error_ends_the_stream_and_fails_the_job(kind: str) -> None:
    cleaned: list[bool] = []
    if kind == "sync":

        def fn(job: Job) -> Iterator[Any]:
            try:
                yield "first"
                yield {"error": "bad things"}
                yield "never"
            finally:
                cleaned.append(True)

    else:

        async def fn(job: Job) -> AsyncIterator[Any]:  # type: ignore[misc]
            try:
                yield "first"
                yield {"error": "bad things"}
                yield "never"
            finally:
                cleaned.append(True)

    run = Run(handler(aggregate_stream=True)(fn))
    o = await run()
    assert o.status is JobStatus.FAILED
    assert o.error == "HandlerError: bad things"
    assert run.outputs == ["first"]
    assert cleaned == [True], "the generator is closed, so its cleanup runs"


@pytest.mark.parametrize("flag", [True, False])
async def test_refresh_worker_is_popped_from_the_output_and_flagged(flag: bool) -> None:
    @handler
    def h(job: Job) -> dict[str, Any]:
        return {"refresh_worker": flag, "ok": 1}

    o = await Run(h)()
    assert o.status is JobStatus.COMPLETED
    assert output(o) == {"ok": 1}
    assert o.refresh_worker is flag


async def test_non_serializable_return_value_fails_clearly() -> None:
    @handler
    def h(job: Job) -> Any:
        return {"when": object()}

    o = await Run(h)()
    assert o.status is JobStatus.FAILED
    assert o.error is not None and o.error.startswith("OutputNotSerializable: output is not JSON-serializable")


async def test_non_serializable_yielded_item_fails_clearly() -> None:
    @handler
    async def h(job: Job) -> AsyncIterator[Any]:
        yield 1
        yield {1, 2}

    run = Run(h)
    o = await run()
    assert o.status is JobStatus.FAILED
    assert o.error is not None and "not JSON-serializable" in o.error
    assert run.outputs == [1]


async def test_oversized_non_string_item_fails_the_job() -> None:
    @handler
    def h(job: Job) -> Iterator[Any]:
        yield ["x" * MAX_ITEM_OUTPUT]

    o = await Run(h)()
    assert o.status is JobStatus.FAILED
    assert o.error is not None and o.error.startswith("OutputTooLarge:") and "only strings are split" in o.error


async def test_output_over_the_result_cap_fails_the_job() -> None:
    @handler
    def h(job: Job) -> str:
        return "x" * 200

    o = await Run(h)(result_cap=100)
    assert o.status is JobStatus.FAILED
    assert o.error is not None and o.error.startswith("OutputTooLarge:") and "result cap" in o.error


async def test_aggregated_output_over_the_result_cap_fails_the_job() -> None:
    @handler(aggregate_stream=True)
    async def h(job: Job) -> AsyncIterator[Any]:
        for _ in range(10):
            yield "y" * 20

    o = await Run(h)(result_cap=100)
    assert o.status is JobStatus.FAILED
    assert o.error is not None and "aggregated output" in o.error and "result cap" in o.error


async def test_final_output_over_the_result_cap_fails_the_job() -> None:
    @handler
    async def h(job: Job) -> AsyncIterator[Any]:
        yield Final("z" * 500)

    o = await Run(h)(result_cap=100)
    assert o.status is JobStatus.FAILED
    assert o.error is not None and "result cap" in o.error


async def test_output_right_at_the_result_cap_completes() -> None:
    @handler
    def h(job: Job) -> str:
        return "x" * 98  # 100 bytes with the quotes

    o = await Run(h)(result_cap=100)
    assert o.status is JobStatus.COMPLETED


# --- timeout ---------------------------------------------------------------------------------------------------


async def test_timeout_of_a_sync_handler_ends_timed_out_and_marks_the_job_cancelled() -> None:
    noticed = threading.Event()

    @handler
    def h(job: Job) -> str:
        if job.wait_cancelled(10):
            noticed.set()
        return "late"

    run = Run(h)
    o = await run(timeout=0.1)
    assert o.status is JobStatus.TIMED_OUT
    assert o.error == "TimeoutError: job exceeded its 0.1 s execution timeout"
    assert o.error_details is not None and o.error_details["error_type"] == "TimeoutError"
    assert run.job.cancelled
    await poll(noticed.is_set)


async def test_timeout_of_an_async_handler_cancels_it() -> None:
    cancelled = asyncio.Event()

    @handler
    async def h(job: Job) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    run = Run(h)
    o = await run(timeout=0.05)
    assert o.status is JobStatus.TIMED_OUT
    assert cancelled.is_set()
    assert run.job.cancelled


async def test_timeout_of_an_async_generator_keeps_the_items_sent_before_it() -> None:
    @handler
    async def h(job: Job) -> AsyncIterator[Any]:
        yield 1
        await asyncio.sleep(30)
        yield 2

    run = Run(h)
    o = await run(timeout=0.1)
    assert o.status is JobStatus.TIMED_OUT
    assert run.outputs == [1]


async def test_timeout_of_an_async_generator_cancels_it_and_closes_it_before_the_outcome() -> None:
    # The generator runs in a task of its own: the job's deadline must still reach it, and its cleanup must be
    # over by the time the outcome is known (the worker reports it next).
    seen: list[str] = []

    @handler
    async def h(job: Job) -> AsyncIterator[Any]:
        try:
            yield 1
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        finally:
            seen.append("closed")

    run = Run(h)
    o = await run(timeout=0.1)
    assert o.status is JobStatus.TIMED_OUT
    assert seen == ["cancelled", "closed"]
    assert run.job.cancelled


async def test_cancelling_the_awaiting_task_cancels_an_async_generator_and_closes_it() -> None:
    started, seen = asyncio.Event(), []

    @handler
    async def h(job: Job) -> AsyncIterator[Any]:
        try:
            yield 1
            started.set()
            await asyncio.sleep(30)
            yield 2
        finally:
            seen.append("closed")

    run = Run(h)
    task = asyncio.create_task(run())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["closed"]
    assert run.outputs == [1]
    assert run.job.cancelled


async def test_an_async_generator_sees_the_context_of_the_task_that_runs_its_job() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    @handler
    async def h(job: Job) -> AsyncIterator[Any]:
        yield var.get()

    run = Run(h)

    async def job_task() -> Outcome:
        var.set("the job's")  # as the worker sets the job's trace in the job's task
        return await run()

    o = await asyncio.create_task(job_task())
    assert o.status is JobStatus.COMPLETED
    assert run.outputs == ["the job's"]


@pytest.mark.parametrize("typed", [False, True], ids=["job-arg", "model-arg"])
async def test_timeout_of_a_sync_generator_blocked_in_its_thread_ends_timed_out(typed: bool) -> None:
    release = threading.Event()
    if typed:

        def fn(p: Prompt) -> Iterator[Any]:
            yield 1
            release.wait(10)
            yield 2

    else:

        def fn(job: Job) -> Iterator[Any]:  # type: ignore[misc]
            yield 1
            release.wait(10)
            yield 2

    run = Run(handler(fn), {"prompt": "p"})
    try:
        o = await run(timeout=0.2)
    finally:
        release.set()
    assert o.status is JobStatus.TIMED_OUT, o.error
    assert run.outputs == [1]
    assert run.job.cancelled


async def test_handlers_own_timeout_error_is_a_failure_not_a_timeout() -> None:
    @handler
    async def h(job: Job) -> None:
        raise TimeoutError("upstream API timed out")

    o = await Run(h)(timeout=30)
    assert o.status is JobStatus.FAILED
    assert o.error == "TimeoutError: upstream API timed out"


async def test_job_finishing_within_its_timeout_completes() -> None:
    @handler
    def h(job: Job) -> int:
        return 7

    o = await Run(h)(timeout=30)
    assert o.status is JobStatus.COMPLETED and output(o) == 7


# --- cancel ----------------------------------------------------------------------------------------------------


async def test_cancelling_the_awaiting_task_cancels_an_async_handler() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    @handler
    async def h(job: Job) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    run = Run(h)
    task = asyncio.create_task(run())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()
    assert run.job.cancelled


async def test_cancelling_the_awaiting_task_marks_a_sync_handler_cancelled_and_abandons_its_thread() -> None:
    started, release = threading.Event(), threading.Event()
    saw_cancelled: list[bool] = []

    @handler
    def h(job: Job) -> str:
        started.set()
        release.wait(10)
        saw_cancelled.append(job.cancelled)
        return "late result"

    pool = ElasticPool(idle_timeout=1)
    run = Run(h, pool=pool)
    task = asyncio.create_task(run())
    try:
        await poll(started.is_set)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert run.job.cancelled, "marked at once, while the thread still runs"
        assert pool.abandoned == 1
    finally:
        release.set()
    await poll(lambda: pool.abandoned == 0)
    assert saw_cancelled == [True]


@pytest.mark.parametrize("typed", [False, True], ids=["job-arg", "model-arg"])
async def test_cancelling_a_sync_generator_blocked_in_its_thread_propagates_the_cancel(typed: bool) -> None:
    started, release = threading.Event(), threading.Event()
    if typed:

        def fn(p: Prompt) -> Iterator[Any]:
            started.set()
            release.wait(10)
            yield 1

    else:

        def fn(job: Job) -> Iterator[Any]:  # type: ignore[misc]
            started.set()
            release.wait(10)
            yield 1

    run = Run(handler(fn), {"prompt": "p"})
    task = asyncio.create_task(run())
    try:
        await poll(started.is_set)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        release.set()
    assert run.job.cancelled
    assert run.outputs == [], "the late item of a cancelled job is discarded"


async def test_progress_from_a_sync_handler_reaches_the_callback() -> None:
    updates: list[Any] = []

    @handler
    def h(job: Job) -> str:
        job.progress({"pct": 50})
        job.progress({"pct": 100})
        return "ok"

    job = Job({"id": "p", "input": {}}, on_progress=updates.append)
    o = await run_job(h, job, emit=Run(h).emit, pool=ElasticPool(idle_timeout=1))
    assert o.status is JobStatus.COMPLETED
    assert updates == [{"pct": 50}, {"pct": 100}]


# --- the async generator's inlined path ---------------------------------------------------------------------------

_yields = st.lists(
    st.one_of(
        st.text(max_size=6),
        st.integers(-3, 3),
        st.dictionaries(st.sampled_from(["text", "n", "error"]), st.integers(0, 3) | st.text(max_size=3), max_size=2),
        st.builds(
            Chunk,
            st.text(max_size=6) | st.dictionaries(st.sampled_from(["text", "error"]), st.text(max_size=3), max_size=2),
            st.none()
            | st.dictionaries(st.sampled_from(["tps", "stream_index", "scenario", "attempt"]), st.integers(0, 9)),
        ),
        st.builds(Final, st.integers(0, 3)),
        st.just(object()),  # not JSON: fails the job at its yield
    ),
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(values=_yields, aggregate=st.booleans())
async def test_an_async_generator_streams_what_a_sync_generator_does_for_any_yields(
    values: list[Any], aggregate: bool
) -> None:
    # Sync generators go through publish; async ones through _pump's inlined copy of it for Chunks and strings.
    # Whatever is yielded (errors, Final, values orjson refuses, reserved metrics), both end the same way.
    def sync_fn(job: Job) -> Iterator[Any]:
        yield from values

    async def async_fn(job: Job) -> AsyncIterator[Any]:  # type: ignore[misc]
        for v in values:
            yield v

    runs = [Run(handler(aggregate_stream=aggregate)(fn)) for fn in (sync_fn, async_fn)]
    outcomes = [await r() for r in runs]
    assert runs[0].items == runs[1].items
    (a, b) = outcomes
    assert (a.status, a.output, a.error) == (b.status, b.output, b.error)
