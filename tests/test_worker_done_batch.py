"""The job-done-batch extension: many results in one request, each judged on its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from handler_sdk.errors import StaleResult, TransportError
from handler_sdk.models import DoneBatchReply, JobStatus
from handler_sdk.runner import Outcome
from handler_sdk.serve.http.workers import _YIELD_EVERY, EXTENSIONS
from handler_sdk.worker import http
from handler_sdk.worker.config import endpoints_from_env
from handler_sdk.worker.http import EXTENSIONS_HEADER, HttpTransport


async def test_done_batch_records_each_result_and_refuses_stale_ones_individually(endpoint_factory):
    ep = await endpoint_factory(None)
    ids = [(await ep.post("run", {"input": {"i": i}}))[1]["id"] for i in range(3)]
    async with ep.http.get(f"{ep.url}/job-take-batch/w1?batch_size=2") as r:
        assert "done-batch" in r.headers["X-Handler-SDK"]
        taken = [j["id"] for j in await r.json()]
    not_taken = next(i for i in ids if i not in taken)
    body = {
        "results": [
            {"id": taken[0], "output": {"ok": 1}},
            {"id": taken[1], "error": "ValueError: nope"},
            {"id": not_taken, "output": "stale"},
            {"id": "no-such-job", "output": 1},
        ]
    }
    async with ep.http.post(f"{ep.url}/job-done-batch/w1", json=body) as r:
        assert r.status == 200
        codes = {x["id"]: x["code"] for x in (await r.json())["results"]}
    assert codes == {taken[0]: 200, taken[1]: 200, not_taken: 409, "no-such-job": 404}
    assert (await ep.get(f"status/{taken[0]}"))[1]["output"] == {"ok": 1}
    failed = (await ep.get(f"status/{taken[1]}"))[1]
    assert failed["status"] == "FAILED" and failed["error"] == "ValueError: nope"
    assert (await ep.get(f"status/{not_taken}"))[1]["status"] == "IN_QUEUE"


async def test_done_batch_with_a_malformed_body_is_a_400(endpoint_factory):
    ep = await endpoint_factory(None)
    for bad in ({"results": "x"}, {"results": [{"no": "id"}]}, [1, 2]):
        async with ep.http.post(f"{ep.url}/job-done-batch/w1", json=bad) as r:
            assert r.status == 400
            assert "error" in await r.json()


async def test_done_batch_judges_an_invalid_result_alone(endpoint_factory):
    ep = await endpoint_factory(None)
    ids = [(await ep.post("run", {"input": {"i": i}}))[1]["id"] for i in range(2)]
    async with ep.http.get(f"{ep.url}/job-take-batch/w1?batch_size=2") as r:
        assert sorted(j["id"] for j in await r.json()) == sorted(ids)
    body = {"results": [{"id": ids[0], "output": 1}, {"id": ids[1], "status": "NOT_A_STATUS", "output": 2}]}
    async with ep.http.post(f"{ep.url}/job-done-batch/w1", json=body) as r:
        assert r.status == 200
        reply = DoneBatchReply.model_validate(await r.json())
    assert [(c.id, c.code) for c in reply.results] == [(ids[0], 200), (ids[1], 400)]
    assert (await ep.get(f"status/{ids[0]}"))[1]["output"] == 1
    assert (await ep.get(f"status/{ids[1]}"))[1]["status"] == "IN_PROGRESS"  # untouched, still the worker's


async def test_a_batch_larger_than_one_turn_of_the_loop_is_applied_whole_and_answered_in_order(endpoint_factory):
    ep = await endpoint_factory(None)
    n = 3 * _YIELD_EVERY + 5
    for i in range(n):
        assert (await ep.post("run", {"input": {"i": i}}))[0] == 200
    async with ep.http.get(f"{ep.url}/job-take-batch/w1?batch_size={n}") as r:
        taken = [j["id"] for j in await r.json()]
    assert len(taken) == n
    body = {"results": [{"id": job_id, "output": {"n": k}} for k, job_id in enumerate(taken)]}
    async with ep.http.post(f"{ep.url}/job-done-batch/w1", json=body) as r:
        reply = DoneBatchReply.model_validate(await r.json())
    assert [(c.id, c.code) for c in reply.results] == [(job_id, 200) for job_id in taken]
    assert (await ep.get("health"))[1]["jobs"]["completed"] == n
    assert (await ep.get(f"status/{taken[-1]}"))[1]["output"] == {"n": n - 1}


# --- the worker's side: HttpTransport batching its results ------------------------------------------------------


@dataclass
class FakeEndpoint:
    """Answers job-take(-batch) with ``jobs`` and job-done-batch with ``codes`` (200 for an id not in it), and
    announces the done-batch extension. ``hold`` keeps job-done-batch requests waiting while it is clear."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)
    status: int = 200
    batches: list[list[dict[str, Any]]] = field(default_factory=list)
    takes: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    hold: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def take(self, request: web.Request) -> web.Response:
        self.takes.append((request.path.split("/")[3], dict(request.query)))
        return web.json_response(self.jobs, headers={EXTENSIONS_HEADER: EXTENSIONS})

    async def done_batch(self, request: web.Request) -> web.Response:
        results = (await request.json())["results"]
        self.batches.append(results)
        self.arrived.set()
        await self.hold.wait()
        if self.status != 200:
            return web.json_response({"error": "down"}, status=self.status)
        codes = [{"id": x["id"], "code": self.codes.get(x["id"], 200)} for x in results]
        return web.json_response({"ok": True, "results": [c for c in codes if c["code"] != 0]})


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeEndpoint, HttpTransport]]:
    f = FakeEndpoint()
    f.hold.set()
    app = web.Application()
    app.router.add_get("/v2/x/job-take/{w}", f.take)
    app.router.add_get("/v2/x/job-take-batch/{w}", f.take)
    app.router.add_post("/v2/x/job-done-batch/{w}", f.done_batch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    env = {"HANDLER_SDK_ENDPOINT_URL": f"http://127.0.0.1:{port}/v2/x", "HANDLER_SDK_WORKER_ID": "w"}
    t = HttpTransport(endpoints_from_env(env), request_timeout_s=10)
    try:
        await t.take(2, busy=False)  # learns the extensions
        assert t.batch_done
        yield f, t
    finally:
        await t.close()
        await runner.cleanup()


def ok(n: int) -> Outcome:
    return Outcome(JobStatus.COMPLETED, output=b'{"n":%d}' % n)


async def test_results_queued_behind_a_batch_in_flight_leave_together_in_one_request(fake) -> None:
    f, t = fake
    f.hold.clear()
    first = asyncio.create_task(t.done("a", ok(0)))
    await asyncio.wait_for(f.arrived.wait(), 10)
    rest = [asyncio.create_task(t.done(job_id, ok(k))) for k, job_id in enumerate("bcdef", start=1)]
    await asyncio.sleep(0.05)
    f.hold.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 10)
    assert [[x["id"] for x in b] for b in f.batches] == [["a"], ["b", "c", "d", "e", "f"]]
    assert f.batches[1][0] == {"id": "b", "output": {"n": 1}}  # a plain success: no status, read as COMPLETED


async def test_each_result_of_a_batch_gets_its_own_verdict(fake) -> None:
    f, t = fake
    f.codes = {"stale": 409, "gone": 404, "bad": 400, "unanswered": 0}
    got = await asyncio.gather(*(t.done(j, ok(0)) for j in ("fine", *f.codes)), return_exceptions=True)
    assert got[0] is None
    assert [type(e) for e in got[1:]] == [StaleResult, StaleResult, TransportError, TransportError]


async def test_a_failed_batch_request_fails_each_of_its_results_for_their_own_retries(fake) -> None:
    f, t = fake
    f.status = 503
    got = await asyncio.gather(t.done("a", ok(0)), t.done("b", ok(1)), return_exceptions=True)
    assert [type(e) for e in got] == [TransportError, TransportError]
    f.status = 200
    assert await t.done("a", ok(0)) is None  # a retry goes out in a batch of its own


async def test_queued_results_over_the_size_cap_leave_in_several_requests_in_order(fake, monkeypatch) -> None:
    f, t = fake
    item = len(b'{"id":"r0","output":{"n":0}}')
    monkeypatch.setattr(http, "_BATCH_BYTES", 2 * item + 1)
    f.hold.clear()
    first = asyncio.create_task(t.done("first", ok(0)))
    await asyncio.wait_for(f.arrived.wait(), 10)
    rest = [asyncio.create_task(t.done(f"r{k}", ok(k))) for k in range(5)]
    await asyncio.sleep(0.05)
    f.hold.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 10)
    assert [[x["id"] for x in b] for b in f.batches] == [["first"], ["r0", "r1"], ["r2", "r3"], ["r4"]]


async def test_takes_ask_for_the_free_slots_and_say_whether_the_worker_is_busy(fake) -> None:
    f, t = fake
    f.jobs = [{"id": "j1", "input": {"a": 1}, "policy": {"executionTimeout": 1500}}, {"id": "j2", "input": None}]
    for n, busy in ((3, True), (1, False), (3, True), (5, False)):
        jobs = await t.take(n, busy)
        assert [(a.id, a.input, a.timeout_s) for a in jobs] == [("j1", {"a": 1}, 1.5), ("j2", None, None)]
    expected = [
        ("job-take-batch", {"job_in_progress": "1", "batch_size": "3"}),
        ("job-take", {"job_in_progress": "0"}),
        ("job-take-batch", {"job_in_progress": "1", "batch_size": "3"}),
        ("job-take-batch", {"job_in_progress": "0", "batch_size": "5"}),
    ]
    assert f.takes[1:] == expected


async def test_a_plain_success_goes_as_its_id_and_output_and_anything_else_with_its_status(fake) -> None:
    f, t = fake
    await t.done("none", Outcome(JobStatus.COMPLETED))
    await t.done("fine", ok(3))
    await t.done("bad", Outcome(JobStatus.FAILED, error="ValueError: x", error_details={"error_type": "ValueError"}))
    await t.done("late", Outcome(JobStatus.TIMED_OUT, output=b"1"))
    items = [x for b in f.batches for x in b]
    assert items[:2] == [{"id": "none"}, {"id": "fine", "output": {"n": 3}}]
    assert items[2]["status"] == "FAILED" and "ValueError" in items[2]["error"]
    assert items[3] == {"id": "late", "status": "TIMED_OUT", "output": 1}
