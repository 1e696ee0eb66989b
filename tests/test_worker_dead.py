"""A setup state that declares the process dead (a vLLM engine that died): the worker fails its running jobs
with the reason, takes nothing more, leaves the endpoint's worker list, and serve exits non-zero; queued jobs
stay queued in the journal for the next start."""

from __future__ import annotations

import asyncio
from typing import Any

from handler_sdk.handler import Handler
from handler_sdk.job import Job
from handler_sdk.worker.loop import WorkerConfig
from tests.conftest import until


class Mortal:
    """A stand-in for an inference engine: jobs hang on it until it dies."""

    def __init__(self) -> None:
        self.died = asyncio.Event()
        self.started = 0

    async def until_dead(self) -> str:
        await self.died.wait()
        return "the engine died: EngineCore exited with signal 9"


def mortal_handler(state: Mortal, *, fail_on_their_own: bool) -> Handler:
    async def setup() -> Mortal:
        return state

    async def run(job: Job) -> Any:
        state.started += 1
        await state.died.wait()
        if fail_on_their_own:
            raise RuntimeError("engine gone")
        await asyncio.sleep(3600)  # a job that would hang on the dead engine

    return Handler(run, concurrency=2, setup=setup)


async def test_a_dead_setup_state_fails_running_jobs_leaves_queued_ones_and_serve_exits_non_zero(endpoint_factory):
    state = Mortal()
    ep = await endpoint_factory(mortal_handler(state, fail_on_their_own=False), worker=WorkerConfig(drain_timeout_s=30))
    ids = [(await ep.post("run", {"input": {"n": i}}))[1]["id"] for i in range(3)]

    async def two_started() -> bool:
        return state.started == 2

    await until(two_started)
    state.died.set()
    await asyncio.wait_for(ep.server.stopped.wait(), 10)
    assert ep.server.exit_code == 1
    running = [ep.server.broker.jobs[i] for i in ids[:2]]
    for r in running:
        assert r.status.value == "FAILED"
        assert r.error is not None and "EngineCore exited with signal 9" in r.error
    assert ep.server.broker.jobs[ids[2]].status.value == "IN_QUEUE"
    assert state.started == 2  # nothing more was taken
    assert "local" not in ep.server.broker.workers


async def test_jobs_that_fail_on_their_own_keep_their_own_error(endpoint_factory):
    state = Mortal()
    ep = await endpoint_factory(mortal_handler(state, fail_on_their_own=True))
    _, job = await ep.post("run", {"input": {}})

    async def started() -> bool:
        return state.started == 1

    await until(started)
    state.died.set()
    await asyncio.wait_for(ep.server.stopped.wait(), 10)
    r = ep.server.broker.jobs[job["id"]]
    assert r.status.value == "FAILED" and r.error == "RuntimeError: engine gone"


async def test_a_job_raising_worker_dead_stops_the_worker_with_its_message(endpoint_factory):
    from handler_sdk.errors import WorkerDead

    async def run(job: Job) -> Any:
        if job.input.get("fatal"):
            raise WorkerDead("the GPU fell off the bus")
        return job.input

    ep = await endpoint_factory(Handler(run, concurrency=1))
    _, ok = await ep.post("runsync", {"input": {"n": 1}})
    assert ok["status"] == "COMPLETED"
    _, fatal = await ep.post("run", {"input": {"fatal": True}})
    await asyncio.wait_for(ep.server.stopped.wait(), 10)
    r = ep.server.broker.jobs[fatal["id"]]
    assert r.status.value == "FAILED" and r.error == "WorkerDead: the GPU fell off the bus"
    _, later = await ep.post("run", {"input": {"n": 2}})
    await asyncio.sleep(0.2)
    assert ep.server.broker.jobs[later["id"]].status.value == "IN_QUEUE"
    assert ep.server.exit_code == 1
