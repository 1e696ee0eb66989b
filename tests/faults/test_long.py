"""The long fault scenarios (``python -m tests.faults`` runs them and writes their figures to docs/GUARANTEES.md):
1,000 queued jobs and a kill -9 of serve, a 30 s outage between a worker and serve, the seed limits at full load,
200 slowloris uploads at the default timeouts, and a hung handler."""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import time

import aiohttp
import pytest

from handler_sdk.loader import load_handler
from handler_sdk.serve.state.broker import BrokerConfig

from .proxy import FaultProxy
from .tools import HANDLERS, call, start_serve, start_worker, until

pytestmark = [pytest.mark.faults_long, pytest.mark.timeout(600)]

RECORD = str(HANDLERS) + ":record"
ECHO = str(HANDLERS) + ":echo"


async def test_kill9_of_serve_with_1000_queued_jobs_loses_none(tmp_path, http, figures):
    data, runs = tmp_path / "data", tmp_path / "runs.log"
    args = ("--data-dir", str(data), "--no-rate-limits")
    s1 = start_serve(tmp_path, *args, target=RECORD, name="s1")
    ids = []
    try:
        for n in range(1000):
            job = {"input": {"n": n, "log": str(runs), "sleep": 0.02}}
            status, body, _ = await call(http, "POST", f"{s1.url}/run", job)
            assert status == 200
            ids.append(body["id"])
        await asyncio.sleep(0.5)
    finally:
        s1.kill9()
    ran_before = len(runs.read_text().splitlines())
    s2 = start_serve(tmp_path, *args, target=RECORD, name="s2", port=s1.port)
    try:

        async def done() -> bool:
            _, h, _ = await call(http, "GET", f"{s2.url}/health")
            return h["jobs"]["completed"] == 1000

        t0 = time.monotonic()
        await until(done, timeout=300, what="1000 completed")
        drain_s = time.monotonic() - t0
        _, h, _ = await call(http, "GET", f"{s2.url}/health")
    finally:
        s2.kill9()
    counts = collections.Counter(runs.read_text().split())
    twice = sum(1 for c in counts.values() if c > 1)
    conn = sqlite3.connect(data / "jobs.sqlite3")
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    assert set(counts) == set(ids) and integrity == "ok"
    assert twice <= 8  # at most the jobs running at the kill (concurrency 4, plus those just leased)
    figures.update(
        completed=f"{h['jobs']['completed']}/1000", ran_before_kill=ran_before, ran_twice=twice,
        retried=h["jobs"]["retried"], integrity=integrity, drain_after_restart_s=round(drain_s, 2),
    )  # fmt: skip


@pytest.mark.parametrize("fault", ["503", "drop"])
async def test_a_30_s_outage_between_worker_and_serve_loses_no_result(endpoint_factory, tmp_path, figures, fault):
    ep = await endpoint_factory(None, broker=BrokerConfig(lease_ms=120_000))
    px = await FaultProxy(f"http://127.0.0.1:{ep.server.port}").start()
    w = start_worker(px.url(f"/v2/{ep.server.cfg.endpoint_id}"), ECHO, tmp_path / "w.log", "wk",
                     HANDLER_SDK_REQUEST_TIMEOUT_S="10")  # fmt: skip
    try:
        ids = []
        for n in range(200):
            _, body, _ = await call(ep.http, "POST", f"{ep.url}/run", {"input": {"n": n, "sleep": 0.05}})
            ids.append(body["id"])
        await asyncio.sleep(1.0)
        px.mode = fault
        await asyncio.sleep(30)
        px.mode = "ok"
        back = time.monotonic()

        async def all_done() -> bool:
            return ep.broker.health()["jobs"]["completed"] == 200

        await until(all_done, timeout=180, what="200 completed")
        drained_s = time.monotonic() - back
        first_take_s = None
        outputs = [ep.broker.jobs[i].output for i in ids]
        assert all(o is not None for o in outputs)
    finally:
        w.kill()
        w.wait(10)
        await px.close()
    figures.update(fault=fault, outage_s=30, results=f"{sum(o is not None for o in outputs)}/200",
                   faulted_requests=px.counts[fault], drained_after_outage_s=round(drained_s, 2),
                   retried=ep.broker.retried)  # fmt: skip
    del first_take_s


async def test_the_seed_limits_at_full_load_answer_429_with_retry_after_and_never_5xx(endpoint_factory, figures):
    ep = await endpoint_factory(load_handler(ECHO), rate_limits=True)
    codes: collections.Counter[int] = collections.Counter()
    errors, no_retry_after, accepted = 0, 0, []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:

        async def client(route: str, n: int) -> None:
            nonlocal errors, no_retry_after
            for i in range(n):
                try:
                    status, body, headers = await call(http, "POST", f"{ep.url}/{route}",
                                                       {"input": {"sleep": 0.05, "i": i}}, timeout=120)  # fmt: skip
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    continue
                codes[status] += 1
                if status == 429 and "Retry-After" not in headers:
                    no_retry_after += 1
                if status == 200 and route == "run":
                    accepted.append(body["id"])

        t0 = time.monotonic()
        # The seed limits (400 /runsync and 200 /run in flight) and 50 clients more on each, so that some get 429.
        await asyncio.gather(*[client("runsync", 4) for _ in range(450)], *[client("run", 4) for _ in range(250)])
        took = time.monotonic() - t0

    async def all_done() -> bool:
        return all(ep.broker.jobs[i].status.terminal for i in accepted)

    await until(all_done, timeout=120, what="accepted jobs finished")
    completed = sum(ep.broker.jobs[i].status.value == "COMPLETED" for i in accepted)
    five = sum(c for s, c in codes.items() if s >= 500)
    assert five == 0 and errors == 0 and no_retry_after == 0 and completed == len(accepted)
    assert codes[429] > 0
    figures.update(
        clients="450 runsync + 250 run (limits 400 + 200), 4 requests each",
        status_codes=dict(sorted(codes.items())),
        five_xx=five,
        connection_errors=errors,
        missing_retry_after=no_retry_after,
        accepted_run_completed=f"{completed}/{len(accepted)}",
        wall_s=round(took, 1),
    )


async def test_200_slowloris_uploads_free_their_slots_at_the_default_body_timeout(endpoint_factory, figures):
    ep = await endpoint_factory(load_handler(ECHO), rate_limits=True)
    conns = []
    for _ in range(200):
        r, w = await asyncio.open_connection("127.0.0.1", ep.server.port)
        w.write(b"POST /v2/local/run HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n")
        conns.append((r, w))
    idle = []
    for _ in range(3):  # connections that never send a byte
        idle.append(await asyncio.open_connection("127.0.0.1", ep.server.port))
    t0 = time.monotonic()
    await asyncio.sleep(1)
    status, _, _ = await call(ep.http, "POST", f"{ep.url}/run", {"input": {}})
    assert status == 429

    async def admitted() -> bool:
        return (await call(ep.http, "POST", f"{ep.url}/run", {"input": {}}))[0] == 200

    await until(admitted, timeout=60, what="a /run admitted again")
    freed_s = time.monotonic() - t0
    idle_closed = [await asyncio.wait_for(r.read(), 30) == b"" for r, _ in idle]
    for _, w in conns + idle:
        w.close()
    assert freed_s < 40 and all(idle_closed)
    figures.update(stalled_uploads=200, run_admitted_again_after_s=round(freed_s, 1),
                   silent_connections_closed=f"{sum(idle_closed)}/3")  # fmt: skip


async def test_a_hung_sync_handler_ends_timed_out_at_its_execution_timeout(endpoint_factory, figures):
    ep = await endpoint_factory(load_handler(str(HANDLERS) + ":hang"), broker=BrokerConfig(execution_grace_ms=5000))
    t0 = time.monotonic()
    job = {"input": {"seconds": 600}, "policy": {"executionTimeout": 2000}}
    status, body, _ = await call(ep.http, "POST", f"{ep.url}/runsync", job, timeout=30)
    took = time.monotonic() - t0
    assert status == 200 and body["status"] == "TIMED_OUT"
    status, later, _ = await call(ep.http, "POST", f"{ep.url}/runsync", {"input": {"seconds": 0}}, timeout=30)
    assert later["status"] == "COMPLETED"  # the abandoned thread holds no slot
    figures.update(execution_timeout_ms=2000, timed_out_after_s=round(took, 2))
