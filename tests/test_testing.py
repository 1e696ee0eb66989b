"""handler_sdk.testing: a job run in-process says what serve would say (proved per handler kind against a real
endpoint), with stream items as they come, progress updates, a timeout, a cancel and a failing setup."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from handler_sdk import Chunk, Final, SetupError, handler
from handler_sdk.loader import load_handler
from handler_sdk.models import JobStatus
from handler_sdk.testing import arun, astream, run, stream
from tests.conftest import HANDLERS


@pytest.mark.parametrize(
    ("target", "input"),
    [
        ("kinds.py:sync_echo", {"x": 1}),
        ("kinds.py:async_echo", {"x": 1}),
        ("kinds.py:sync_gen", {"n": 4}),
        ("kinds.py:async_gen", {"n": 4}),
        ("raises.py", {"why": "because"}),
        ("ep_stream.py:yields_error", {}),
    ],
)
async def test_a_job_run_in_process_reports_what_serve_reports(endpoint_factory, target, input):
    ep = await endpoint_factory(target)
    served = await ep.client.runsync(input)
    served_items = [i async for i in ep.client.stream(served.id)]
    local = await arun(load_handler(str(HANDLERS / target)), input)
    assert local.status is served.status
    assert local.output == served.output
    assert local.error == served.error
    assert [i.model_dump() for i in local.stream_items] == [i.model_dump() for i in served_items]
    if served.errorDetails is None:
        assert local.error_details is None
    else:
        assert local.error_details is not None
        assert local.error_details.error_type == served.errorDetails.error_type
        assert local.error_details.error_message == served.errorDetails.error_message
        assert local.error_details.worker_id == served.errorDetails.worker_id


def test_run_from_plain_code_gives_status_output_and_stream():
    @handler
    def words(job):
        yield Chunk("a", metrics={"n": 1})
        yield "b"
        yield Final({"count": 2})

    result = run(words, {})
    assert result.ok and result.output == {"count": 2} and result.stream == ["a", "b"]
    first, second = (i.metrics for i in result.stream_items)
    assert first.items() >= {"n": 1, "stream_index": 0, "scenario": "stream"}.items()  # serve's own added
    assert second.items() >= {"stream_index": 1, "scenario": "stream"}.items() and "n" not in second
    assert run(lambda job: {"plain": job["input"]}, {"y": 2}).output == {"plain": {"y": 2}}


async def test_run_works_inside_a_running_event_loop_too():
    assert run(lambda job: 7).output == 7


async def test_progress_updates_are_recorded_in_order():
    step = threading.Event()

    @handler
    def train(job):
        for i in range(3):
            job.progress({"step": i})
            step.wait(0.2)  # slower than the worker sends them, so they normally arrive one by one
        return "done"

    result = await arun(train)
    assert result.output == "done"
    # Updates faster than they are sent coalesce (latest wins), so under load one may be skipped, never reordered.
    assert result.progress[-1] == {"step": 2}
    assert result.progress == sorted(result.progress, key=lambda p: p["step"])
    assert len(result.progress) >= 2


async def test_timeout_ends_the_job_timed_out_and_cancel_after_ends_it_cancelled():
    @handler
    async def slow(job):
        await asyncio.sleep(30)

    timed = await arun(slow, timeout=0.2)
    assert timed.status is JobStatus.TIMED_OUT and timed.error is not None and "timeout" in timed.error
    cancelled = await arun(slow, cancel_after=0.2)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.output is None

    @handler(timeout=0.2)
    def blocking(job):
        job.wait_cancelled(30)
        return "late"

    assert (await arun(blocking)).status is JobStatus.TIMED_OUT


def test_stream_yields_each_item_while_the_handler_still_runs_then_has_the_result():
    release = threading.Event()

    @handler
    def gated(job):
        yield 1
        assert release.wait(10), "the test never read the first item"
        yield 2
        return None

    s = stream(gated)
    got = []
    for out in s:
        got.append(out)
        release.set()  # the handler is blocked until the first item has reached us
    assert got == [1, 2]
    assert s.result is not None and s.result.status is JobStatus.COMPLETED


def test_stream_cancel_stops_the_job():
    @handler
    def endless(job):
        i = 0
        while not job.cancelled:
            yield i
            i += 1
            time.sleep(0.01)

    s = stream(endless)
    for out in s:
        if out == 2:
            s.cancel()
    assert s.result is not None and s.result.status is JobStatus.CANCELLED


async def test_astream_yields_outputs_in_order():
    @handler
    async def gen(job):
        for i in range(3):
            yield {"i": i}

    assert [o async for o in astream(gen)] == [{"i": 0}, {"i": 1}, {"i": 2}]


async def test_a_failing_setup_hook_raises_setup_error():
    def broken() -> None:
        raise OSError("weights missing")

    @handler(setup=broken)
    def h(job):
        return 1

    with pytest.raises(SetupError, match="weights missing"):
        await arun(h)

    @handler(setup=lambda: {"model": "m"})
    def uses_state(job):
        return job.state

    assert (await arun(uses_state)).output == {"model": "m"}


def test_a_batched_handler_runs_as_a_batch_of_one():
    @handler(batch_size=4, batch_wait_ms=0)
    def double(jobs):
        return [{"twice": j.input["n"] * 2, "batch": len(jobs)} for j in jobs]

    assert run(double, {"n": 21}).output == {"twice": 42, "batch": 1}
