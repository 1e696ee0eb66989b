"""The setup hook on a real endpoint: /health shows initializing while it runs and jobs wait queued; a failing hook
stops the endpoint with exit code 1 and leaves jobs queued; refresh_worker restarts the worker and re-runs setup."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from handler_sdk.models import HealthWorkers, JobStatus


@pytest.fixture
def setup_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    gate = tmp_path / "setup-gate"
    monkeypatch.setenv("EP_SETUP_GATE", str(gate))
    return gate


async def test_health_shows_initializing_and_jobs_wait_until_setup_finishes(endpoint_factory, setup_gate):
    ep = await endpoint_factory("ep_setup.py")
    try:
        h = await ep.client.health()
        assert (h.workers.initializing, h.workers.idle, h.workers.running) == (1, 0, 0)
        job = await ep.client.run({})
        await asyncio.sleep(0.3)
        assert (await ep.client.status(job.id)).status is JobStatus.IN_QUEUE
        h = await ep.client.health()
        assert h.workers.initializing == 1 and h.jobs.inQueue == 1
    finally:
        setup_gate.touch()
    done = await ep.client.wait(job.id, timeout=10)
    assert done.output == {"setup_runs": 1, "state": {"loaded": 1}}
    assert (await ep.client.health()).workers == HealthWorkers(idle=1, running=0, initializing=0)


async def test_a_failing_setup_hook_stops_the_endpoint_with_exit_code_1_and_jobs_stay_queued(endpoint_factory):
    ep = await endpoint_factory(None)
    job = await ep.client.run({})
    await ep.server.close()
    failing = await endpoint_factory("setup_fails.py", data_dir=ep.server.cfg.data_dir)
    async with asyncio.timeout(15):
        await failing.server.stopped.wait()
    assert failing.server.exit_code == 1
    assert (await failing.client.status(job.id)).status is JobStatus.IN_QUEUE
    h = await failing.client.health()
    assert h.jobs.inQueue == 1 and h.workers.running == 0


async def test_refresh_worker_restarts_the_worker_and_reruns_setup(endpoint_factory, setup_gate):
    setup_gate.touch()
    ep = await endpoint_factory("ep_setup.py")
    first = await ep.client.runsync({})
    assert first.output == {"setup_runs": 1, "state": {"loaded": 1}}
    first_worker = ep.server.worker
    refresh = await ep.client.runsync({"refresh": True})
    assert refresh.status is JobStatus.COMPLETED
    assert "refresh_worker" not in refresh.output  # the flag is for the runtime, not the client
    for _ in range(250):
        if ep.server.worker is not first_worker:
            break
        await asyncio.sleep(0.02)
    after = await ep.client.runsync({})
    assert after.status is JobStatus.COMPLETED
    assert after.output == {"setup_runs": 2, "state": {"loaded": 2}}


async def test_refresh_worker_from_a_runpod_style_handler(endpoint_factory):
    ep = await endpoint_factory("runpod_style.py")
    first_worker = ep.server.worker
    _, body = await ep.post("runsync", {"input": {"refresh": True}})
    assert body["status"] == "COMPLETED" and body["output"] == {"ok": True}
    for _ in range(250):
        if ep.server.worker is not first_worker:
            break
        await asyncio.sleep(0.02)
    assert ep.server.worker is not first_worker, "the worker was not restarted"
    _, again = await ep.post("runsync", {"input": {"x": 1}})
    assert again["output"] == {"echo": {"x": 1}, "id_seen": again["id"]}


async def test_a_job_queued_behind_a_refresh_runs_on_the_fresh_worker(endpoint_factory, setup_gate):
    ep = await endpoint_factory("ep_setup.py")
    try:
        # Both jobs queue while setup holds the worker, so the second is waiting when the first asks for a refresh.
        first = await ep.client.run({"refresh": True})
        second = await ep.client.run({})
    finally:
        setup_gate.touch()
    assert (await ep.client.wait(first.id, timeout=10)).output["setup_runs"] == 1
    done = await ep.client.wait(second.id, timeout=10)
    assert done.output == {"setup_runs": 2, "state": {"loaded": 2}}
