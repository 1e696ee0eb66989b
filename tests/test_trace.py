"""W3C trace context: a job keeps the client's traceparent (or starts a trace) and it reaches the worker, the
handler (``job.trace``), the worker's log lines for that job and the webhook, never the /status reply."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from handler_sdk import trace
from tests.conftest import wait_for_line

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SCRIPT = "obs_script.py"


def test_parse_keeps_valid_traceparents_and_refuses_the_rest():
    assert trace.parse(TP) == TP
    assert trace.parse(" " + TP + " ") == TP
    assert trace.parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future") is not None
    for bad in (
        None,
        "",
        "garbage",
        TP.upper(),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
        TP + "-extra",  # version 00 has exactly four fields
    ):
        assert trace.parse(bad) is None, bad


@given(st.uuids(version=4), st.booleans())
def test_a_trace_derived_from_any_job_id_is_valid(u, sync):
    job_id = f"sync-{u}" if sync else str(u)
    assert trace.parse(trace.derived(job_id)) == trace.derived(job_id)


@given(st.text(max_size=60))
def test_a_trace_derived_from_any_id_at_all_is_valid(job_id):
    assert trace.parse(trace.derived(job_id)) is not None


async def test_the_clients_traceparent_reaches_the_worker_in_the_job_take_body(endpoint_factory, http):
    ep = await endpoint_factory(None)
    async with http.post(f"{ep.url}/run", json={"input": {"a": 1}}, headers={"traceparent": TP}) as r:
        job_id = (await r.json())["id"]
    code, job = await ep.get("job-take/w1")
    assert code == 200 and job["id"] == job_id
    assert job["traceparent"] == TP


async def test_without_a_traceparent_each_job_gets_a_new_trace(endpoint_factory):
    ep = await endpoint_factory(None)
    await ep.post("run", {"input": {}}, headers={"traceparent": "not-a-trace"})
    await ep.post("run", {"input": {}})
    taken = [(await ep.get("job-take/w1"))[1] for _ in range(2)]
    traces = [j["traceparent"] for j in taken]
    assert all(trace.parse(t) == t for t in traces)
    assert "not-a-trace" not in traces and traces[0] != traces[1]
    # Sent again (another take after a requeue) it is the same trace.
    assert {t.split("-")[1] for t in traces} == {j["id"].replace("-", "") for j in taken}


async def test_the_handler_reads_it_as_job_trace_and_status_does_not_echo_it(endpoint_factory, http):
    ep = await endpoint_factory(SCRIPT)
    async with http.post(f"{ep.url}/runsync", json={"input": {}}, headers={"traceparent": TP}) as r:
        body = await r.json()
        assert "traceparent" not in r.headers
    assert body["output"]["trace"] == TP
    async with http.post(f"{ep.url}/run", json={"input": {}}, headers={"traceparent": TP}) as r:
        job_id = (await r.json())["id"]
    final = await ep.wait_status(job_id, "COMPLETED")
    assert final["output"]["trace"] == TP
    async with http.get(f"{ep.url}/status/{job_id}") as r:
        raw = await r.read()
        assert "traceparent" not in r.headers
    assert raw.count(TP.encode()) == 1  # only inside the handler's own output
    assert set(final) == {"id", "status", "delayTime", "executionTime", "output", "workerId"}


async def test_a_job_without_one_still_has_job_trace(endpoint_factory):
    ep = await endpoint_factory(SCRIPT)
    _, body = await ep.post("runsync", {"input": {}})
    assert trace.parse(body["output"]["trace"]) is not None


async def test_the_webhook_is_sent_with_the_jobs_traceparent_header(endpoint_factory, http):
    got: asyncio.Queue[str | None] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        got.put_nowait(request.headers.get("traceparent"))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        ep = await endpoint_factory(SCRIPT)
        async with http.post(f"{ep.url}/run", json={"input": {}, "webhook": url}, headers={"traceparent": TP}):
            pass
        assert await asyncio.wait_for(got.get(), 10) == TP
        await ep.post("run", {"input": {}, "webhook": url})
        derived = await asyncio.wait_for(got.get(), 10)
        assert trace.parse(derived) is not None and derived != TP
    finally:
        await runner.cleanup()


async def test_the_trace_survives_a_restart_of_serve(endpoint_factory, tmp_path):
    data = tmp_path / "kept"
    ep = await endpoint_factory(None, data_dir=data)
    async with ep.http.post(f"{ep.url}/run", json={"input": {}}, headers={"traceparent": TP}) as r:
        job_id = (await r.json())["id"]
    await ep.server.close()
    ep2 = await endpoint_factory(None, data_dir=data)
    _, job = await ep2.get("job-take/w1")
    assert job["id"] == job_id and job["traceparent"] == TP


@pytest.mark.parametrize(("target", "fmt"), [(SCRIPT, "json"), (SCRIPT, "plain"), ("obs_sync_log.py", "json")])
async def test_the_workers_log_lines_for_a_job_carry_its_traceparent(endpoint_factory, process_factory, target, fmt):
    ep = await endpoint_factory(None)
    env = {"HANDLER_SDK_ENDPOINT_URL": ep.url, "HANDLER_SDK_WORKER_ID": "tracer", "HANDLER_SDK_LOG_FORMAT": fmt}
    p = process_factory("-m", "handler_sdk.worker", f"tests/handlers/{target}", env=env, name="worker")
    await asyncio.to_thread(wait_for_line, p, "starting")
    async with ep.http.post(f"{ep.url}/run", json={"input": {"log": True, "fail": "nope"}},
                            headers={"traceparent": TP}) as r:  # fmt: skip
        job_id = (await r.json())["id"]
    await ep.wait_status(job_id, "FAILED", timeout=20)
    await asyncio.to_thread(wait_for_line, p, f"job {job_id} FAILED")
    lines = [ln for ln in p.output().splitlines() if job_id in ln]
    assert len(lines) >= 2  # the handler's own line (from its thread, for a sync one) and the worker's FAILED line
    assert any("handler running" in ln for ln in lines)
    for ln in lines:
        if fmt == "json":
            d = json.loads(ln)
            assert d["job_id"] == job_id and d["traceparent"] == TP
        else:
            assert ln.endswith(f"traceparent={TP}")
    others = [ln for ln in p.output().splitlines() if job_id not in ln]
    assert others and not any(TP in ln for ln in others)  # lines outside the job carry none


def _derived_by_regex(job_id: str) -> str:
    import re

    h = job_id.removeprefix("sync-").replace("-", "")
    if re.fullmatch(r"[0-9a-f]{32}", h) is None:
        h = (h.encode().hex() + "1" * 32)[:32]
    return "00-" + h + "-" + h[16:] + "-01"


@given(st.uuids().map(str) | st.text() | st.text(alphabet="0123456789abcdefABCDEF-", min_size=30, max_size=36))
def test_a_derived_trace_reads_as_the_regex_defined_it(job_id):
    assert trace.derived(job_id) == _derived_by_regex(job_id)
    assert trace.derived("sync-" + job_id) == _derived_by_regex("sync-" + job_id)
