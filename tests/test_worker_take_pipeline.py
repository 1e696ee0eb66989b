"""Pipelined takes (the take-pipeline extension): a worker keeps a second take in flight while the jobs of the
first run, never asking for more jobs than it has free slots; and a drain over HTTP loses and duplicates nothing
when job-done-batch requests fail before or after the endpoint applied them."""

from __future__ import annotations

import asyncio
import collections
import json
import random
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handler_sdk import handler
from handler_sdk.chunker import EncodedItem
from handler_sdk.handler import Handler
from handler_sdk.runner import Outcome
from handler_sdk.serve.http.workers import EXTENSIONS
from handler_sdk.worker.config import endpoints_from_env
from handler_sdk.worker.http import EXTENSIONS_HEADER, HttpTransport
from handler_sdk.worker.loop import Worker, WorkerConfig
from handler_sdk.worker.taking import PIPELINE
from handler_sdk.worker.transport import Assignment

pytestmark = pytest.mark.stores("sqlite", "redis")

FAST = WorkerConfig(backoff_base_s=0.005, backoff_max_s=0.02, take_backoff_max_s=0.02, drain_timeout_s=5)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    # A loop of our own: hypothesis calls this many times, and pytest-asyncio's loop must stay the current one.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


# --- the pump against a scripted transport ---------------------------------------------------------------------


@dataclass
class Scripted:
    """A transport whose takes answer after a scripted delay with up to the asked number of jobs (a scripted
    share of it), and that checks, at every take, that the worker asks only for slots it has free."""

    worker: Worker | None = None
    total: int = 0
    takes_in_flight: int = 2
    delays: list[float] = field(default_factory=list)
    shares: list[float] = field(default_factory=list)
    asked: list[int] = field(default_factory=list)  # per take in flight: the jobs it asked for
    handed: int = 0
    done_ids: list[str] = field(default_factory=list)
    most: int = 0
    violations: list[str] = field(default_factory=list)
    worker_id: str = "w"
    batch_stream: bool = True
    direct: bool = False
    can_hand_back: bool = False

    async def take(self, n: int, busy: bool) -> list[Assignment]:
        assert self.worker is not None
        w = self.worker
        if n + sum(self.asked) + len(w.running) > w.limit:
            self.violations.append(f"asked {n} with {self.asked} in flight and {len(w.running)} running")
        if self.asked and not busy:
            self.violations.append("job_in_progress=0 while another take was in flight")
        self.asked.append(n)
        self.most = max(self.most, len(self.asked))
        try:
            await asyncio.sleep(self.delays.pop() if self.delays else 0.0)
            share = self.shares.pop() if self.shares else 1.0
            k = min(n, self.total - self.handed, max(1, round(n * share)))
            jobs = [Assignment(f"j{self.handed + i}", {"i": self.handed + i}, {"id": f"j{self.handed + i}"})
                    for i in range(k)]  # fmt: skip
            self.handed += k
            if self.handed >= self.total and not jobs:
                w.stop()
            return jobs
        finally:
            self.asked.remove(n)

    async def done(self, job_id: str, outcome: Outcome) -> None:
        # A result takes a while to deliver, as over a network: the worker still holds the job meanwhile.
        await asyncio.sleep(0.001)
        self.done_ids.append(job_id)
        if len(self.done_ids) == self.total and self.worker is not None:
            self.worker.stop()

    async def stream(self, job_id: str, items: Sequence[EncodedItem]) -> None: ...

    async def progress(self, job_id: str, output: bytes) -> None: ...

    async def ping(self, job_ids: Sequence[str], initializing: bool) -> None: ...

    async def stops(self) -> list[str]:
        await asyncio.sleep(3600)
        return []

    async def hand_back(self, job_ids: Sequence[str]) -> None: ...

    async def close(self) -> None: ...


def sleeper(concurrency: int, durations: list[float]) -> Handler:
    @handler(concurrency=concurrency)
    async def sleepy(job: Any) -> Any:
        await asyncio.sleep(durations[job.input["i"] % len(durations)])
        return job.input

    return sleepy


async def pump_once(limit: int, total: int, delays: list[float], shares: list[float], durations: list[float],
                    depth: int = 2) -> Scripted:  # fmt: skip
    t = Scripted(total=total, delays=list(delays), shares=list(shares), takes_in_flight=depth)
    w = Worker(sleeper(limit, durations), t, FAST)
    t.worker = w
    await asyncio.wait_for(w.run(), 30)
    return t


@settings(max_examples=40, deadline=None)
@given(
    limit=st.integers(1, 9),
    total=st.integers(1, 40),
    delays=st.lists(st.sampled_from([0.0, 0.0005, 0.002]), max_size=20),
    shares=st.lists(st.sampled_from([0.1, 0.5, 1.0]), max_size=20),
    durations=st.lists(st.sampled_from([0.0, 0.001, 0.003]), min_size=1, max_size=5),
)
def test_pipelined_takes_never_ask_for_more_jobs_than_free_slots_and_run_each_job_once(
    limit: int, total: int, delays: list[float], shares: list[float], durations: list[float]
) -> None:
    t = run(pump_once(limit, total, delays, shares, durations))
    assert t.violations == []
    assert sorted(t.done_ids) == sorted(f"j{i}" for i in range(total))
    assert t.most <= min(PIPELINE, limit)


def test_a_worker_with_several_slots_keeps_a_second_take_in_flight() -> None:
    t = run(pump_once(4, 40, [0.002] * 20, [], [0.0]))  # jobs end before the take that follows them returns
    assert t.violations == []
    assert t.most == 2


def test_without_take_pipeline_one_take_is_in_flight_at_a_time() -> None:
    t = run(pump_once(4, 40, [0.002] * 20, [], [0.002], depth=1))
    assert t.most == 1
    assert sorted(t.done_ids) == sorted(f"j{i}" for i in range(40))


# --- over HTTP: what the transport learns ----------------------------------------------------------------------


async def learned(ext: str | None) -> int:
    async def take(request: web.Request) -> web.Response:
        headers = {} if ext is None else {EXTENSIONS_HEADER: ext}
        return web.Response(status=204, headers=headers)

    app = web.Application()
    app.router.add_get("/v2/x/job-take-batch/{w}", take)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    env = {"HANDLER_SDK_ENDPOINT_URL": f"http://127.0.0.1:{runner.addresses[0][1]}/v2/x", "HANDLER_SDK_WORKER_ID": "w"}
    t = HttpTransport(endpoints_from_env(env), request_timeout_s=10)
    try:
        await t.take(2, busy=False)
        return t.takes_in_flight
    finally:
        await t.close()
        await runner.cleanup()


async def test_the_transport_pipelines_takes_only_where_the_endpoint_announces_it() -> None:
    assert "take-pipeline" in EXTENSIONS
    assert await learned(EXTENSIONS) == 2
    assert await learned("1; ext=stream-batch,hand-back,done-batch,stream-multi") == 1
    assert await learned(None) == 1  # a plain runpod endpoint


# --- over HTTP: a drain through a proxy that fails job-done-batch requests -------------------------------------


@dataclass
class Flaky:
    """Forwards the worker's requests to the endpoint; each job-done-batch takes the next mode from ``plan``:
    "ok", "before" (503, not forwarded) or "after" (forwarded and applied, then answered 503)."""

    target: str
    session: aiohttp.ClientSession
    plan: list[str] = field(default_factory=list)
    applied_twice: list[str] = field(default_factory=list)
    ok_ids: collections.Counter[str] = field(default_factory=collections.Counter)

    async def forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        url = self.target + request.path_qs
        is_done = "/job-done-batch/" in request.path
        mode = (self.plan.pop(0) if self.plan else "ok") if is_done else "ok"
        if mode == "before":
            return web.json_response({"error": "injected"}, status=503)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
        async with self.session.request(request.method, url, data=body or None, headers=headers) as r:
            data = await r.read()
            status, ext = r.status, r.headers.get(EXTENSIONS_HEADER)
        if is_done and status == 200:
            for x in json.loads(data)["results"]:
                if x["code"] == 200:
                    self.ok_ids[x["id"]] += 1
        if mode == "after":
            return web.json_response({"error": "injected"}, status=503)
        return web.Response(body=data, status=status, headers={} if ext is None else {EXTENSIONS_HEADER: ext},
                            content_type="application/json" if data else None)  # fmt: skip


@pytest.fixture
async def flaky(endpoint_factory: Any, http: aiohttp.ClientSession) -> Any:
    ep = await endpoint_factory(None)
    origin = ep.url.split("/v2/")[0]
    f = Flaky(origin, http)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", f.forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    proxied = ep.url.replace(origin, f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        yield ep, f, proxied
    finally:
        await runner.cleanup()


RUNS: collections.Counter[str] = collections.Counter()


@handler(concurrency=6)
async def counting(job: Any) -> Any:
    RUNS[job.id] += 1
    await asyncio.sleep(random.choice([0.0, 0.001]))
    return job.input


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.sampled_from(["ok", "before", "after"]), min_size=1, max_size=6), jobs=st.integers(1, 20))
async def test_a_drain_through_failing_done_batches_completes_every_job_once(flaky: Any, plan: list[str],
                                                                              jobs: int) -> None:  # fmt: skip
    ep, f, url = flaky  # one endpoint for every example: each drains its own jobs on top of the last ones'
    f.plan = list(plan)
    f.ok_ids.clear()
    ids = [(await ep.post("run", {"input": {"k": k}}))[1]["id"] for k in range(jobs)]
    env = {"HANDLER_SDK_ENDPOINT_URL": url, "HANDLER_SDK_WORKER_ID": f"w{random.randrange(1 << 30)}"}
    t = HttpTransport(endpoints_from_env(env), request_timeout_s=10)
    w = Worker(counting, t, FAST)
    running = asyncio.create_task(w.run())
    try:
        for _ in range(1000):
            statuses = [(await ep.get(f"status/{i}"))[1] for i in ids]
            if all(s["status"] == "COMPLETED" for s in statuses) and not w.job_ids():
                break
            await asyncio.sleep(0.01)
        w.stop()
        await asyncio.wait_for(running, 30)
    finally:
        await t.close()
    assert [s["output"] for s in statuses] == [{"k": k} for k in range(jobs)]  # none lost, each its own output
    assert all(RUNS[i] == 1 for i in ids)  # none ran twice
    assert all(f.ok_ids[i] == 1 for i in ids)  # each result applied exactly once
    assert w.pump.most_in_flight == 2  # the takes were pipelined
