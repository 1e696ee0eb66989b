"""The dashboard's data routes: the same counts as /health, live NDJSON snapshots, one job in full, a public
page with key-guarded data, and no rate limit on any of it."""

from __future__ import annotations

import asyncio

import pytest

from handler_sdk import codec
from handler_sdk.models import DashboardJobDetail, DashboardState, JobStatus
from handler_sdk.serve.http.finishes import Finishes
from handler_sdk.serve.state.record import JobRecord

# The same tests on both job stores: the embedded default and a real redis-server.
pytestmark = pytest.mark.stores("sqlite", "redis")

SCRIPT = "obs_script.py"


async def test_the_state_counts_jobs_as_health_does_and_lists_workers_and_recent_jobs(endpoint_factory):
    ep = await endpoint_factory(SCRIPT)
    for i in ({}, {"fail": "no"}, {"stream": 2}):
        await ep.post("runsync", {"input": i})
    _, queued = await ep.post("run", {"input": {"sleep": 30}})
    await ep.wait_status(queued["id"], "IN_PROGRESS")
    code, state = await ep.get("dashboard/state")
    assert code == 200
    s = DashboardState.model_validate(state)
    _, health = await ep.get("health")
    assert state["health"] == health
    assert [w.model_dump() for w in s.workers] == [
        {"id": ep.server.local_worker_id, "state": "running", "jobs": [queued["id"]], "lastPing": s.workers[0].lastPing}
    ]
    assert s.recent[0].id == queued["id"]  # newest first, full ids
    assert [r.status for r in s.recent] == [JobStatus.IN_PROGRESS, JobStatus.COMPLETED, JobStatus.FAILED,
                                            JobStatus.COMPLETED]  # fmt: skip
    assert s.recent[2].error == "ValueError: no"
    assert sum(p.completed for p in s.series) == 2 and sum(p.failed for p in s.series) == 1
    assert s.submitted == {"run": 1, "runsync": 3, "openai": 0} and s.streamItems == 2
    await ep.post(f"cancel/{queued['id']}")


async def test_events_stream_a_snapshot_a_second_as_ndjson(endpoint_factory):
    ep = await endpoint_factory(SCRIPT, dashboard_events_s=1.5)
    async with ep.http.get(f"{ep.url}/dashboard/events") as r:
        assert r.status == 200 and r.content_type == "application/x-ndjson"
        first = await r.content.readline()
        await ep.post("runsync", {"input": {}})
        rest = await r.read()  # the reply ends after dashboard_events_s
    lines = [first, *rest.splitlines()]
    states = [DashboardState.model_validate(codec.loads(ln)) for ln in lines if ln.strip()]
    assert len(states) == 3  # at 0, 1 and 1.5 s
    assert states[0].health.jobs.completed == 0 and states[-1].health.jobs.completed == 1


async def test_one_job_in_full_with_its_input_output_and_stream_from_an_index(endpoint_factory):
    ep = await endpoint_factory(SCRIPT)
    _, job = await ep.post("run", {"input": {"stream": 3}})
    await ep.wait_status(job["id"], "COMPLETED")
    code, d = await ep.get(f"dashboard/jobs/{job['id']}")
    assert code == 200
    detail = DashboardJobDetail.model_validate(d)
    assert detail.input == {"stream": 3} and detail.output["echo"] == {"stream": 3}
    assert detail.streamTotal == 3 and [i.output for i in detail.stream] == [{"token": f"t{i}"} for i in range(3)]
    assert detail.stream[0].metrics == {"tokens": 1, "kv_cache_usage": 0.25, "stream_index": 0, "scenario": "stream",
                                        "attempt": 1}  # fmt: skip
    _, d2 = await ep.get(f"dashboard/jobs/{job['id']}?from=2")
    assert [i["output"] for i in d2["stream"]] == [{"token": "t2"}] and d2["streamTotal"] == 3
    # Reading it moves no /stream cursor.
    _, s = await ep.get(f"stream/{job['id']}")
    assert len(s["stream"]) == 3
    assert (await ep.get("dashboard/jobs/nope"))[0] == 404


async def test_a_waiting_job_read_returns_when_a_stream_item_lands(endpoint_factory):
    ep = await endpoint_factory(SCRIPT)
    _, job = await ep.post("run", {"input": {"stream": 2, "gap": 0.3, "sleep": 5}})
    await ep.wait_status(job["id"], "IN_PROGRESS")
    loop = asyncio.get_running_loop()
    seen = 0
    while seen < 2:
        t0 = loop.time()
        _, d = await ep.get(f"dashboard/jobs/{job['id']}?from={seen}&wait=5000")
        assert d["stream"], d  # woke up for an item, not at the end of its wait
        assert loop.time() - t0 < 4
        seen = d["streamTotal"]
    await ep.post(f"cancel/{job['id']}")


async def test_the_page_is_public_but_its_data_needs_the_key(endpoint_factory, http):
    ep = await endpoint_factory(SCRIPT, api_key="k")
    base = f"http://127.0.0.1:{ep.server.port}"
    for url in (f"{base}/", f"{ep.url}/dashboard"):
        async with http.get(url) as r:
            assert r.status == 200 and r.content_type == "text/html"
            html = await r.text()
            assert '<meta name="endpoint-prefix" content="/v2/local">' in html
            assert 'src="http' not in html and 'href="http' not in html  # no CDN
    for op in ("dashboard/state", "dashboard/events", "dashboard/jobs/x"):
        async with http.get(f"{ep.url}/{op}") as r:
            assert r.status == 401, op
    async with http.get(f"{ep.url}/dashboard/state", headers={"Authorization": "Bearer k"}) as r:
        assert r.status == 200


async def test_the_dashboards_routes_are_outside_every_rate_limit_group(endpoint_factory):
    ep = await endpoint_factory(SCRIPT, rate_limits=True, dashboard_events_s=0)
    codes = [(await ep.get("dashboard/state"))[0] for _ in range(30)]
    codes += [(await ep.get("dashboard/events"))[0] for _ in range(15)]
    assert set(codes) == {200}
    requests = [(await ep.get("requests"))[0] for _ in range(12)]
    assert requests.count(429) == 2  # /requests still has its 10 per 10 s


def _record(status: JobStatus, created: int, started: int | None, ended: int) -> JobRecord:
    r = JobRecord("j", None, created)
    r.status, r.started, r.ended = status, started, ended
    return r


def test_history_buckets_finished_jobs_per_second_and_forgets_old_ones():
    f = Finishes(span_s=10)
    h = f.history
    f.on_terminal(_record(JobStatus.COMPLETED, 1000, 1010, 1100))
    f.on_terminal(_record(JobStatus.COMPLETED, 1000, 1030, 1500))
    f.on_terminal(_record(JobStatus.CANCELLED, 1200, None, 1900))  # cancelled in the queue: no latency
    f.on_terminal(_record(JobStatus.TIMED_OUT, 2000, 2000, 3000))
    s = h.series(3500)
    assert s == [
        {"t": 1000, "completed": 2, "failed": 0, "cancelled": 1, "delayMs": 20.0, "executionMs": 280.0},
        {"t": 3000, "completed": 0, "failed": 1, "cancelled": 0, "delayMs": 0.0, "executionMs": 1000.0},
    ]
    f.on_terminal(_record(JobStatus.FAILED, 12000, 12000, 12500))
    assert [p["t"] for p in h.series(12600)] == [3000, 12000]  # the second at 1 s is past the 10 s span


def test_the_delay_of_a_job_without_an_end_is_still_observed_for_metrics():
    f = Finishes()
    f.on_terminal(_record(JobStatus.COMPLETED, 1000, 1010, 1100))
    r = _record(JobStatus.FAILED, 2000, 2030, 0)
    r.ended = None  # a view of a finished job that carries no end (nothing for the per-second series)
    f.on_terminal(r)
    assert f.finished[JobStatus.FAILED] == 1
    assert (sum(f.delay.counts), f.delay.sum_ms) == (2, 40)
    assert (sum(f.execution.counts), f.execution.sum_ms) == (1, 90)
    assert [p["t"] for p in f.history.series(2500)] == [1000]
