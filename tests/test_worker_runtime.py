"""Our worker process (``python -m handler_sdk.worker``) against serve, over real HTTP on loopback.

The endpoint runs in the test's event loop; every worker is a real subprocess. Between them, where a test needs
to watch or break the wire, sits a small aiohttp reverse proxy that records each request and can answer 503 to
job-done (a platform that is down) or hide the extensions header (a server that does not announce them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import HANDLERS, ROOT, Proc, free_port

from handler_sdk.serve.state.broker import BrokerConfig
from handler_sdk.worker.config import endpoints_from_env
from handler_sdk.worker.http import EXTENSIONS_HEADER, HttpTransport

pytestmark = pytest.mark.timeout(60)

# --- the wire: a recording, fault-injecting reverse proxy --------------------------------------------------


@dataclass
class Seen:
    method: str
    op: str
    path: str
    query: dict[str, str]
    body: bytes
    status: int
    reply: bytes
    auth: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Proxy:
    upstream: str
    http: aiohttp.ClientSession
    seen: list[Seen] = field(default_factory=list)
    fail_done: bool = False  # answer every job-done with 503
    fail_done_times: int = 0  # answer the next N job-dones with 503
    strip_extensions: bool = False  # a server that does not announce our extensions
    stream_delay_s: float = 0.0  # a slow network for job-stream: items pile up behind each request
    at_once: dict[str, int] = field(default_factory=dict)  # op -> a status answered at once, never held
    port: int = 0

    def url(self, endpoint_id: str = "local") -> str:
        return f"http://127.0.0.1:{self.port}/v2/{endpoint_id}"

    def ops(self, op: str) -> list[Seen]:
        return [s for s in self.seen if s.op == op]

    def stream_parts(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """Stream posts as per-job bodies, in the order sent: a job-stream body, or one job's part of a
        job-stream-batch (once serve announces stream-multi), with ``"id"`` added to the former."""
        out = []
        for s in self.seen:
            if s.op == "job-stream":
                out.append({"id": s.path.split("/")[5], **s.json()})
            elif s.op == "job-stream-batch":
                out.extend(s.json()["streams"])
        return [p for p in out if job_id is None or p["id"] == job_id]

    def done_ops(self) -> list[Seen]:
        """Result posts, one per job (job-done) or batched (job-done-batch, once serve announces it)."""
        return [s for s in self.seen if s.op in ("job-done", "job-done-batch")]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        parts = request.path.split("/")
        op = parts[3] if len(parts) > 3 else ""
        if op in ("job-done", "job-done-batch") and (self.fail_done or self.fail_done_times > 0):
            self.fail_done_times = max(0, self.fail_done_times - 1)
            self.seen.append(Seen(request.method, op, request.path, dict(request.query), body, 503, b""))
            return web.Response(status=503, text="upstream down for maintenance")
        if op in self.at_once:
            self.seen.append(Seen(request.method, op, request.path, dict(request.query), body, self.at_once[op], b""))
            return web.Response(status=self.at_once[op])
        if op in ("job-stream", "job-stream-batch") and self.stream_delay_s:
            await asyncio.sleep(self.stream_delay_s)
        headers = {k: request.headers[k] for k in ("Authorization", "Content-Type") if k in request.headers}
        async with self.http.request(
            request.method, self.upstream + request.path_qs, data=body or None, headers=headers
        ) as r:
            data = await r.read()
            out = {"Content-Type": r.headers.get("Content-Type", "application/json")}
            if EXTENSIONS_HEADER in r.headers and not self.strip_extensions:
                out[EXTENSIONS_HEADER] = r.headers[EXTENSIONS_HEADER]
            status = r.status
        seen = Seen(request.method, op, request.path, dict(request.query), body, status, data)
        seen.auth = request.headers.get("Authorization")
        self.seen.append(seen)
        if status == 204:
            return web.Response(status=204, headers={k: v for k, v in out.items() if k != "Content-Type"})
        return web.Response(body=data, status=status, headers=out)


# --- the rig -----------------------------------------------------------------------------------------------


@dataclass
class Rig:
    tmp: Path
    http: aiohttp.ClientSession
    make_endpoint: Callable[..., Awaitable[Any]]
    runners: list[web.AppRunner] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    serves: list[Proc] = field(default_factory=list)

    async def endpoint(self, **overrides: Any) -> Any:
        """A pure-queue endpoint (external workers only), short holds."""
        overrides.setdefault("take_hold_s", 0.3)
        return await self.make_endpoint(None, **overrides)

    async def proxy(self, ep: Any, **options: Any) -> Proxy:
        upstream = f"http://127.0.0.1:{ep.server.port}"
        p = Proxy(upstream, self.http, **options)
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", p.handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        p.port = runner.addresses[0][1]
        self.runners.append(runner)
        return p

    def worker(self, target: str, url: str, wid: str = "wk-1", **env: str) -> Proc:
        full = {**self.worker_env(url, wid), **env}
        return self.start("-m", "handler_sdk.worker", str(HANDLERS / target), env=full, name=wid)

    def worker_env(self, url: str, wid: str) -> dict[str, str]:
        return {
            "HANDLER_SDK_ENDPOINT_URL": url,
            "HANDLER_SDK_WORKER_ID": wid,
            "HANDLER_SDK_PING_INTERVAL_MS": "200",
            "HANDLER_SDK_BACKOFF_BASE_S": "0.05",
            "HANDLER_SDK_BACKOFF_MAX_S": "0.5",
            "HANDLER_SDK_SPOOL_DIR": str(self.tmp / f"spool-{wid}"),
            "HANDLER_SDK_DRAIN_TIMEOUT_S": "20",
            "HANDLER_SDK_LOG_FORMAT": "plain",
            # An outer environment's runpod settings would win over the endpoint URL: blank them.
            "RUNPOD_WEBHOOK_GET_JOB": "",
            "RUNPOD_WEBHOOK_POST_OUTPUT": "",
            "RUNPOD_WEBHOOK_POST_STREAM": "",
            "RUNPOD_WEBHOOK_PING": "",
            "RUNPOD_POD_ID": "",
            "RUNPOD_AI_API_KEY": "",
            "RUNPOD_PING_INTERVAL": "",
        }

    def start(self, *args: str, env: dict[str, str], name: str) -> Proc:
        log = self.tmp / f"{name}-{len(self.procs)}.log"
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            p = subprocess.Popen(
                [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            )  # fmt: skip
        self.procs.append(Proc(p, log))
        return self.procs[-1]

    def spool(self, wid: str = "wk-1") -> list[Path]:
        d = self.tmp / f"spool-{wid}"
        return sorted(d.glob("*.json")) if d.exists() else []

    async def close(self) -> None:
        for p in self.serves:
            # SIGTERM first: serve stops its own worker subprocesses, which SIGKILL would orphan.
            if p.proc.poll() is None:
                p.proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.proc.wait(10)
        for p in self.procs:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGCONT)  # a stopped process dies only once it runs
                p.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.proc.wait(5)
        for r in self.runners:
            await r.cleanup()


@pytest.fixture
async def rig(tmp_path: Path, http: aiohttp.ClientSession, endpoint_factory: Any) -> AsyncIterator[Rig]:
    r = Rig(tmp_path, http, endpoint_factory)
    yield r
    await r.close()


async def until(check: Callable[[], Any], what: str, timeout: float = 20.0, proc: Proc | None = None) -> Any:
    """Poll ``check`` (sync or async) until it is truthy; generous deadlines, the machine is shared."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            log = f"\n--- process output (end) ---\n{proc.output()[-4000:]}" if proc is not None else ""
            raise AssertionError(f"never: {what}{log}")
        await asyncio.sleep(0.03)


async def exit_code(p: Proc, timeout: float = 20.0) -> int:
    await until(lambda: p.proc.poll() is not None, "the process exited", timeout, p)
    return p.proc.returncode


async def log_line(p: Proc, text: str, timeout: float = 20.0) -> None:
    await until(lambda: text in p.output(), f"{text!r} in the worker output", timeout, p)


async def submit(ep: Any, inp: dict[str, Any]) -> str:
    code, body = await ep.post("run", {"input": inp})
    assert code == 200, body
    return str(body["id"])


async def status(ep: Any, job_id: str) -> dict[str, Any]:
    code, body = await ep.get(f"status/{job_id}")
    assert code == 200, body
    return dict(body)


async def health(ep: Any) -> dict[str, Any]:
    code, body = await ep.get("health")
    assert code == 200
    return dict(body)


async def reaches(ep: Any, job_id: str, *statuses: str, timeout: float = 20.0, proc: Proc | None = None) -> dict:
    got: dict[str, Any] = {}

    async def check() -> bool:
        got.update(await status(ep, job_id))
        return got["status"] in statuses

    await until(check, f"job {job_id} reached {statuses} (last: {got})", timeout, proc)
    return got


# --- taking jobs -------------------------------------------------------------------------------------------


async def test_batch_take_leases_up_to_free_capacity_in_one_request(rig: Rig) -> None:
    ep = await rig.endpoint()
    px = await rig.proxy(ep)
    ids = [await submit(ep, {"i": i, "seconds": 0.2}) for i in range(6)]
    w = rig.worker("wk_jobs.py:batch_echo", px.url())
    for i, job_id in enumerate(ids):
        body = await reaches(ep, job_id, "COMPLETED", proc=w)
        assert body["output"]["input"]["i"] == i
        assert body["output"]["worker"] == "wk-1"
    takes = px.ops("job-take-batch")
    assert px.ops("job-take") == []
    first = next(s for s in takes if s.status == 200)
    assert first.query["batch_size"] == "4"  # the handler's concurrency, all free
    assert first.query["job_in_progress"] == "0"
    assert len(json.loads(first.reply)) == 4


async def test_single_take_at_concurrency_one_uses_job_take(rig: Rig) -> None:
    ep = await rig.endpoint()
    px = await rig.proxy(ep)
    ids = [await submit(ep, {"i": i}) for i in range(3)]
    w = rig.worker("wk_jobs.py:single_echo", px.url())
    for i, job_id in enumerate(ids):
        assert (await reaches(ep, job_id, "COMPLETED", proc=w))["output"]["input"] == {"i": i}
    assert px.ops("job-take-batch") == []
    takes = [s for s in px.ops("job-take") if s.status == 200]
    assert len(takes) == 3
    assert all(isinstance(json.loads(s.reply), dict) for s in takes)
    # The first take finds the worker idle; a later one may be sent while a result is still on its way (the job
    # is still leased to it then, so it says 1: a 0 would tell the endpoint that the worker lost it).
    assert takes[0].query["job_in_progress"] == "0"
    assert {s.query["job_in_progress"] for s in takes} <= {"0", "1"}


@pytest.mark.parametrize("query", ["?gpu=SIM", ""])
async def test_a_worker_configured_by_runpod_variables_alone_runs_against_serve(rig: Rig, query: str) -> None:
    ep = await rig.endpoint(api_key="wkey")
    px = await rig.proxy(ep)
    b = px.url()
    w = rig.worker(
        "wk_jobs.py:stream_fast", "",
        HANDLER_SDK_WORKER_ID="", HANDLER_SDK_PING_INTERVAL_MS="",
        RUNPOD_WEBHOOK_GET_JOB=f"{b}/job-take/$ID{query}",
        RUNPOD_WEBHOOK_POST_OUTPUT=f"{b}/job-done/$RUNPOD_POD_ID/$ID{query}",
        RUNPOD_WEBHOOK_POST_STREAM=f"{b}/job-stream/$RUNPOD_POD_ID/$ID{query}",
        RUNPOD_WEBHOOK_PING=f"{b}/ping/$RUNPOD_POD_ID{query}",
        RUNPOD_AI_API_KEY="wkey", RUNPOD_POD_ID="pod-7", RUNPOD_PING_INTERVAL="200",
    )  # fmt: skip
    job_id = await submit(ep, {"n": 3})
    body = await reaches(ep, job_id, "COMPLETED", proc=w)
    assert body["workerId"] == "pod-7"
    assert await stream_outputs(ep, job_id) == [0, 1, 2]
    await until(lambda: px.ops("job-stop"), "a job-stop poll answered (it is held open)", proc=w)
    ops = {s.op for s in px.seen}
    assert ops >= {"job-take", "ping", "job-stop"}
    assert ops & {"job-done", "job-done-batch"}  # results batch once serve announces done-batch
    assert ops & {"job-stream", "job-stream-batch"}  # and streams once it announces stream-multi
    assert all(s.path.split("/")[4] == "pod-7" for s in px.seen)
    assert all(s.auth == "wkey" for s in px.seen)  # the bare key, as runpod's platform expects
    assert all(s.status < 400 for s in px.seen)
    assert all(("gpu" in s.query) == bool(query) for s in px.seen)
    [done] = px.done_ops()
    assert done.path.endswith((f"/pod-7/{job_id}", "/job-done-batch/pod-7")) and job_id.encode() in (
        done.body + done.path.encode()
    )


@pytest.mark.parametrize(("op", "reply"), [("job-take", 204), ("job-take", 500), ("job-stop", 204)])
async def test_polls_answered_at_once_with_nothing_or_an_error_do_not_make_the_worker_spin(
    rig: Rig, op: str, reply: int
) -> None:
    ep = await rig.endpoint()
    px = await rig.proxy(ep, at_once={op: reply})
    w = rig.worker("wk_jobs.py:single_echo", px.url())
    await until(lambda: px.ops(op), "a first poll", proc=w)
    await asyncio.sleep(1.0)
    polls = len(px.ops(op))
    # A loop that re-polls at once makes thousands of requests a second; backing off makes a handful.
    assert polls < 40, f"{polls} {op} polls in about a second"
    px.at_once.clear()
    job_id = await submit(ep, {"after": reply})
    await reaches(ep, job_id, "COMPLETED", proc=w)


# --- streaming ---------------------------------------------------------------------------------------------


async def stream_outputs(ep: Any, job_id: str) -> list[Any]:
    code, body = await ep.get(f"stream/{job_id}")
    assert code == 200
    return [c["output"] for c in body["stream"]]


async def test_stream_items_arrive_in_order_batched_when_the_server_announces_it(rig: Rig) -> None:
    ep = await rig.endpoint()
    px = await rig.proxy(ep, stream_delay_s=0.05)
    w = rig.worker("wk_jobs.py:stream_fast", px.url())
    job_id = await submit(ep, {"n": 200})
    await reaches(ep, job_id, "COMPLETED", proc=w)
    assert await stream_outputs(ep, job_id) == list(range(200))
    posts = px.stream_parts(job_id)
    assert len(posts) < 200
    batches = [p["outputs"] for p in posts if "outputs" in p]
    assert any(len(b) > 1 for b in batches)
    sent = [x for p in posts for x in (p["outputs"] if "outputs" in p else [p["output"]])]
    assert sent == list(range(200))  # each item once, in order, across requests


async def test_many_jobs_stream_items_share_requests_each_in_order_once_serve_announces_stream_multi(rig: Rig) -> None:
    ep = await rig.endpoint()
    px = await rig.proxy(ep, stream_delay_s=0.02)
    w = rig.worker("wk_jobs.py:stream_many", px.url())
    ids = [await submit(ep, {"n": 60}) for _ in range(6)]
    for job_id in ids:
        await reaches(ep, job_id, "COMPLETED", proc=w)
    for job_id in ids:
        assert await stream_outputs(ep, job_id) == list(range(60))
        sent = [x for p in px.stream_parts(job_id) for x in p["outputs"]]
        assert sent == list(range(60))  # each item once, in order, across shared requests
    multi = px.ops("job-stream-batch")
    assert multi, "the worker never used job-stream-batch"
    assert any(len({p["id"] for p in s.json()["streams"]}) > 1 for s in multi)  # several jobs in one request
    assert sum(len(s.json()["streams"]) for s in multi) > len(multi)
    assert len(multi) + len(px.ops("job-stream")) < 6 * 60 / 4


async def test_stream_items_go_one_per_request_to_a_server_that_does_not_announce_batching(rig: Rig) -> None:
    ep = await rig.endpoint()
    px = await rig.proxy(ep, stream_delay_s=0.02, strip_extensions=True)
    w = rig.worker("wk_jobs.py:stream_fast", px.url())
    job_id = await submit(ep, {"n": 30})
    await reaches(ep, job_id, "COMPLETED", proc=w)
    assert await stream_outputs(ep, job_id) == list(range(30))
    bodies = [s.json() for s in px.ops("job-stream")]
    assert [b["output"] for b in bodies] == list(range(30))
    assert all("outputs" not in b for b in bodies)
    assert {s.query["isStream"] for s in px.ops("job-stream")} == {"false"}


async def test_batched_stream_bodies_stay_within_1_mib(rig: Rig) -> None:
    ep = await rig.endpoint()
    px = await rig.proxy(ep, stream_delay_s=0.05)
    w = rig.worker("wk_jobs.py:stream_big", px.url())
    job_id = await submit(ep, {"n": 24, "size": 300_000})
    await reaches(ep, job_id, "COMPLETED", proc=w)
    posts = px.stream_parts(job_id)
    assert posts
    # One job's items in one body (or one job's part of a job-stream-batch) stay under the 1 MiB item limit.
    assert all(len(json.dumps({k: v for k, v in p.items() if k != "id"})) <= 1 << 20 for p in posts)
    assert any(len(p.get("outputs", [])) > 1 for p in posts)  # batched, yet under the limit
    _, body = await ep.get(f"stream/{job_id}")
    assert [c["output"][:4] for c in body["stream"]] == [f"{i:04d}" for i in range(24)]


async def test_a_slow_yield_is_sent_at_once(rig: Rig) -> None:
    ep = await rig.endpoint()
    w = rig.worker("wk_jobs.py:stream_gated", ep.url)
    gate = rig.tmp / "gate"
    job_id = await submit(ep, {"gate": str(gate)})
    seen: list[Any] = []

    async def first_item() -> bool:
        seen.extend(await stream_outputs(ep, job_id))
        return bool(seen)

    await until(first_item, "the first item reached the endpoint while the handler waits", proc=w)
    assert seen == ["before the gate"]
    assert (await status(ep, job_id))["status"] == "IN_PROGRESS"
    gate.touch()
    await reaches(ep, job_id, "COMPLETED", proc=w)
    assert await stream_outputs(ep, job_id) == ["after the gate"]


async def test_http_transport_uses_extensions_only_after_the_server_announces_them(rig: Rig) -> None:
    ep = await rig.endpoint()
    plain = await rig.proxy(ep, strip_extensions=True)
    for url, announced in [(ep.url, True), (plain.url(), False)]:
        t = HttpTransport(endpoints_from_env({"HANDLER_SDK_ENDPOINT_URL": url, "HANDLER_SDK_WORKER_ID": "probe"}))
        try:
            assert (t.batch_stream, t.can_hand_back) == (False, False)
            await t.ping([], initializing=False)
            assert (t.batch_stream, t.can_hand_back) == (announced, announced)
        finally:
            await t.close()


# --- leases, stale results ---------------------------------------------------------------------------------


async def test_kill_9_mid_job_the_job_completes_on_another_worker_and_retried_goes_up(rig: Rig) -> None:
    ep = await rig.endpoint(broker=BrokerConfig(lease_ms=1000, tick_s=0.02))
    victim = rig.worker("wk_jobs.py:hang_on", ep.url, "victim")
    job_id = await submit(ep, {"hang_on": "victim"})
    assert (await reaches(ep, job_id, "IN_PROGRESS", proc=victim))["workerId"] == "victim"
    rescuer = rig.worker("wk_jobs.py:hang_on", ep.url, "rescuer")
    victim.proc.send_signal(signal.SIGKILL)
    body = await reaches(ep, job_id, "COMPLETED", proc=rescuer)
    assert body["output"]["worker"] == "rescuer"
    assert body["retries"] == 1
    assert (await health(ep))["jobs"]["retried"] == 1


async def test_a_stale_result_is_refused_and_ignored(rig: Rig) -> None:
    ep = await rig.endpoint(broker=BrokerConfig(lease_ms=1000, tick_s=0.02))
    sleepy = rig.worker("wk_jobs.py:hang_on", ep.url, "sleepy")
    job_id = await submit(ep, {"hang_on": "sleepy", "seconds": 3})
    await reaches(ep, job_id, "IN_PROGRESS", proc=sleepy)
    # Frozen mid-job: its lease lapses and the job goes to another worker, which finishes it.
    sleepy.proc.send_signal(signal.SIGSTOP)
    try:
        await reaches(ep, job_id, "IN_QUEUE")
        fresh = rig.worker("wk_jobs.py:hang_on", ep.url, "fresh")
        assert (await reaches(ep, job_id, "COMPLETED", proc=fresh))["output"]["worker"] == "fresh"
    finally:
        sleepy.proc.send_signal(signal.SIGCONT)
    # Thawed, the old worker finishes its copy and reports it: refused, logged, and the job keeps fresh's result.
    await log_line(sleepy, f"result of job {job_id} refused by the endpoint")
    body = await status(ep, job_id)
    assert (body["status"], body["output"]["worker"], body["workerId"]) == ("COMPLETED", "fresh", "fresh")
    assert sleepy.proc.poll() is None  # a refused result is no reason to die


# --- result delivery ---------------------------------------------------------------------------------------


async def test_a_result_is_retried_until_the_server_recovers(rig: Rig) -> None:
    ep = await rig.endpoint()
    px = await rig.proxy(ep, fail_done_times=3)
    w = rig.worker("wk_jobs.py:single_echo", px.url(), HANDLER_SDK_REPORT_RETRIES="6")
    job_id = await submit(ep, {"x": 1})
    body = await reaches(ep, job_id, "COMPLETED", proc=w)
    assert body["output"]["input"] == {"x": 1}
    assert [s.status for s in px.done_ops()] == [503, 503, 503, 200]
    assert rig.spool() == []


async def test_an_undeliverable_result_is_spooled_and_sent_when_the_server_recovers(rig: Rig) -> None:
    ep = await rig.endpoint()
    px = await rig.proxy(ep, fail_done=True)
    w = rig.worker("wk_jobs.py:single_echo", px.url(), HANDLER_SDK_REPORT_RETRIES="1")
    job_id = await submit(ep, {"x": 2})
    await until(rig.spool, "the result was spooled", proc=w)
    assert (await status(ep, job_id))["status"] == "IN_PROGRESS"
    # The heartbeat keeps naming the spooled job, so its lease holds while the result waits.
    n = len(px.seen)
    await until(lambda: any(s.query.get("job_id") == job_id for s in px.ops("ping")[n:]), "a ping names it")
    px.fail_done = False
    body = await reaches(ep, job_id, "COMPLETED", proc=w)
    assert body["output"]["input"] == {"x": 2}
    await log_line(w, f"spooled result of job {job_id} delivered")
    assert rig.spool() == []


async def test_a_spooled_result_is_sent_after_a_worker_restart(rig: Rig) -> None:
    ep = await rig.endpoint()
    px = await rig.proxy(ep, fail_done=True)
    first = rig.worker("wk_jobs.py:single_echo", px.url(), HANDLER_SDK_REPORT_RETRIES="0")
    job_id = await submit(ep, {"x": 3})
    await until(rig.spool, "the result was spooled", proc=first)
    first.proc.send_signal(signal.SIGKILL)
    assert await exit_code(first) == -signal.SIGKILL
    px.fail_done = False
    second = rig.worker("wk_jobs.py:single_echo", px.url(), HANDLER_SDK_REPORT_RETRIES="0")
    body = await reaches(ep, job_id, "COMPLETED", proc=second)
    assert body["output"]["pid"] == first.proc.pid  # the first process's result, not a re-run
    await log_line(second, f"spooled result of job {job_id} delivered")
    assert rig.spool() == []


# --- drain on SIGTERM --------------------------------------------------------------------------------------


async def test_sigterm_drain_finishes_running_jobs_reports_them_and_exits_0(rig: Rig) -> None:
    ep = await rig.endpoint()
    px = await rig.proxy(ep)
    w = rig.worker("wk_jobs.py:sleeps", px.url())
    job_id = await submit(ep, {"seconds": 1})
    await reaches(ep, job_id, "IN_PROGRESS", proc=w)
    w.proc.send_signal(signal.SIGTERM)
    assert await exit_code(w) == 0, w.output()
    body = await status(ep, job_id)
    assert (body["status"], body["output"]["slept"]) == ("COMPLETED", 1)
    assert "draining" in w.output()
    assert px.ops("job-handback") == []


async def test_sigterm_drain_deadline_hands_unfinished_jobs_back(rig: Rig) -> None:
    ep = await rig.endpoint()
    px = await rig.proxy(ep)
    w = rig.worker("wk_jobs.py:hang_on", px.url(), HANDLER_SDK_DRAIN_TIMEOUT_S="0.5")
    job_id = await submit(ep, {"hang_on": "wk-1"})
    await reaches(ep, job_id, "IN_PROGRESS", proc=w)
    w.proc.send_signal(signal.SIGTERM)
    assert await exit_code(w) == 0, w.output()
    body = await status(ep, job_id)
    assert body["status"] == "IN_QUEUE"
    assert "output" not in body
    assert (await health(ep))["jobs"]["retried"] == 0  # handed back, not lost
    assert [s.json() for s in px.ops("job-handback")] == [{"ids": [job_id]}]
    assert px.done_ops() == []


async def test_drain_deadline_against_a_server_without_hand_back_leaves_the_lease_to_lapse(rig: Rig) -> None:
    ep = await rig.endpoint(broker=BrokerConfig(lease_ms=1000, tick_s=0.02))
    px = await rig.proxy(ep, strip_extensions=True)
    w = rig.worker("wk_jobs.py:hang_on", px.url(), HANDLER_SDK_DRAIN_TIMEOUT_S="0.3")
    job_id = await submit(ep, {"hang_on": "wk-1"})
    await reaches(ep, job_id, "IN_PROGRESS", proc=w)
    w.proc.send_signal(signal.SIGTERM)
    assert await exit_code(w) == 0, w.output()
    await reaches(ep, job_id, "IN_QUEUE")
    assert (await health(ep))["jobs"]["retried"] == 1
    assert px.ops("job-handback") == []
    assert px.done_ops() == []


# --- cancel ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["wk_cancel.py:async_wait", "wk_cancel.py:sync_wait"])
async def test_cancel_reaches_the_remote_worker_through_job_stop(rig: Rig, target: str) -> None:
    ep = await rig.endpoint()
    px = await rig.proxy(ep)
    w = rig.worker(target, px.url())
    marker = rig.tmp / "cancelled.txt"
    job_id = await submit(ep, {"marker": str(marker)})
    await reaches(ep, job_id, "IN_PROGRESS", proc=w)
    code, body = await ep.post(f"cancel/{job_id}")
    assert (code, body["status"]) == (200, "CANCELLED")
    await until(marker.exists, "the handler saw the cancel", proc=w)
    assert any(s.status == 200 and json.loads(s.reply) == {"jobsToStop": [job_id]} for s in px.ops("job-stop"))
    await log_line(w, f"job {job_id} stopped")
    assert px.done_ops() == []  # a stopped job is not reported
    assert (await status(ep, job_id))["status"] == "CANCELLED"
    # The slot is free again: the next job runs.
    job2 = await submit(ep, {"marker": str(rig.tmp / "second.txt")})
    await reaches(ep, job2, "IN_PROGRESS", proc=w)


# --- concurrency modifier ----------------------------------------------------------------------------------


async def test_concurrency_changes_at_runtime_and_bad_modifier_values_are_logged_and_ignored(rig: Rig) -> None:
    ep = await rig.endpoint()
    limit = rig.tmp / "concurrency.txt"
    gate = rig.tmp / "gate"
    limit.write_text("1")
    w = rig.worker("wk_modifier.py:gated", ep.url, WK_CONCURRENCY_FILE=str(limit))
    ids = [await submit(ep, {"i": i, "gate": str(gate)}) for i in range(5)]

    async def in_progress() -> int:
        return int((await health(ep))["jobs"]["inProgress"])

    await until(in_progress, "a job started", proc=w)
    for _ in range(10):  # at limit 1, a second job never starts
        assert await in_progress() == 1
        await asyncio.sleep(0.05)
    limit.write_text("3")
    await until(lambda: _equals(in_progress(), 3), "three jobs ran at once after the change", proc=w)
    limit.write_text("none")
    await log_line(w, "concurrency modifier returned None")
    limit.write_text("-1")
    await log_line(w, "concurrency modifier returned -1")
    assert w.proc.poll() is None
    assert await in_progress() == 3  # the bad values left the limit at 3
    gate.touch()
    outputs = [(await reaches(ep, job_id, "COMPLETED", proc=w))["output"] for job_id in ids]
    assert outputs == list(range(5))


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


# --- heartbeat ---------------------------------------------------------------------------------------------


async def test_heartbeat_carries_job_ids_and_a_busy_sync_handler_does_not_delay_it(rig: Rig) -> None:
    # The lease (1 s) is far shorter than the job (3 s): only pings sent while the handler holds its thread
    # keep the job from being requeued.
    ep = await rig.endpoint(broker=BrokerConfig(lease_ms=1000, tick_s=0.02))
    px = await rig.proxy(ep)
    w = rig.worker("wk_jobs.py:blocks", px.url())
    await until(lambda: px.ops("ping"), "a first ping", proc=w)
    assert "job_id" not in px.ops("ping")[0].query  # idle: no ids
    job_id = await submit(ep, {"seconds": 3})
    await reaches(ep, job_id, "IN_PROGRESS", proc=w)
    assert (await health(ep))["workers"]["running"] == 1
    await reaches(ep, job_id, "COMPLETED", proc=w)
    assert (await health(ep))["jobs"]["retried"] == 0
    assert (await status(ep, job_id)).get("retries") is None
    busy_pings = [s for s in px.ops("ping") if s.query.get("job_id") == job_id]
    assert len(busy_pings) >= 3


# --- start-up and logs -------------------------------------------------------------------------------------


async def test_a_failing_setup_hook_makes_the_worker_exit_1(rig: Rig) -> None:
    ep = await rig.endpoint()
    px = await rig.proxy(ep)
    w = rig.worker("wk_setup.py", px.url(), WK_SETUP_S="1.5")

    async def initializing() -> bool:
        return bool((await health(ep))["workers"]["initializing"] == 1)

    await until(initializing, "/health counts the worker as initializing while setup runs", proc=w)
    assert await exit_code(w) == 1
    assert "setup hook failed: RuntimeError: model weights not found" in w.output()
    assert any(s.query.get("initializing") == "1" for s in px.ops("ping"))
    assert px.ops("job-take") == px.ops("job-take-batch") == []


async def test_json_logs_carry_the_job_id_and_the_worker_id(rig: Rig) -> None:
    ep = await rig.endpoint()
    w = rig.worker("wk_jobs.py:fails", ep.url, "json-wk", HANDLER_SDK_LOG_FORMAT="json")
    job_id = await submit(ep, {})
    await reaches(ep, job_id, "FAILED", proc=w)
    await log_line(w, "no good")
    w.proc.send_signal(signal.SIGTERM)
    assert await exit_code(w) == 0
    lines = [json.loads(line) for line in w.output().splitlines() if line.strip()]
    assert lines and all(d["worker_id"] == "json-wk" for d in lines)
    [failed] = [d for d in lines if "FAILED" in d["message"]]
    assert failed["job_id"] == job_id
    assert failed["level"] == "INFO"
    assert "ValueError: no good" in failed["message"]


async def test_json_log_of_a_failed_take_names_no_job(rig: Rig) -> None:
    # Nothing listens on this port: every take fails and is logged.
    url = f"http://127.0.0.1:{free_port()}/v2/local"
    w = rig.worker("wk_jobs.py:single_echo", url, "lonely", HANDLER_SDK_LOG_FORMAT="json")
    await until(lambda: "/job-take/lonely" in w.output(), "a failed take was logged", proc=w)
    w.proc.send_signal(signal.SIGTERM)
    assert await exit_code(w) == 0
    lines = [json.loads(line) for line in w.output().splitlines() if line.strip()]
    takes = [d for d in lines if "/job-take/lonely" in d["message"]]
    assert takes
    assert all("job_id" not in d for d in takes)


async def test_start_runs_the_worker_from_a_script(rig: Rig) -> None:
    ep = await rig.endpoint()
    w = rig.start(str(HANDLERS / "wk_script.py"), env=rig.worker_env(ep.url, "scripted"), name="scripted")
    job_id = await submit(ep, {"via": "start()"})
    body = await reaches(ep, job_id, "COMPLETED", proc=w)
    assert body["output"] == {"input": {"via": "start()"}, "worker": "scripted"}
    w.proc.send_signal(signal.SIGTERM)
    assert await exit_code(w) == 0


# --- serve's own worker modes ------------------------------------------------------------------------------


def serve(rig: Rig, *args: str) -> tuple[Proc, str]:
    port = free_port()
    p = rig.start(
        "-m", "handler_sdk.serve", *args, "--port", str(port), "--data-dir", str(rig.tmp / "serve-data"),
        "--hold-s", "0.3", "--drain-timeout", "2", "--no-rate-limits", name="serve",
        env={"HANDLER_SDK_LOG_FORMAT": "plain"},
    )  # fmt: skip
    rig.serves.append(p)
    return p, f"http://127.0.0.1:{port}/v2/local"


@dataclass
class Remote:
    """The helpers' view of an endpoint in another process."""

    url: str
    http: aiohttp.ClientSession

    async def post(self, op: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.post(f"{self.url}/{op}", json=body) as r:
            return r.status, await r.json()

    async def get(self, op: str) -> tuple[int, Any]:
        async with self.http.get(f"{self.url}/{op}") as r:
            return r.status, await r.json()


async def ready(p: Proc) -> None:
    await log_line(p, "handler_sdk endpoint ready", timeout=30)


async def test_serve_with_workers_runs_jobs_on_worker_subprocesses(rig: Rig) -> None:
    p, url = serve(rig, str(HANDLERS / "wk_jobs.py") + ":batch_echo", "--workers", "2")
    await ready(p)
    ep = Remote(url, rig.http)
    ids = [await submit(ep, {"i": i, "seconds": 0.3}) for i in range(10)]
    outputs = [(await reaches(ep, job_id, "COMPLETED", proc=p))["output"] for job_id in ids]
    assert [o["input"]["i"] for o in outputs] == list(range(10))
    assert {o["worker"] for o in outputs} <= {"worker-0", "worker-1"}
    pids = {o["pid"] for o in outputs}
    assert p.proc.pid not in pids  # not run in the serve process
    await until(lambda: _workers_seen(ep, 2), "both workers in /health", proc=p)
    p.proc.send_signal(signal.SIGTERM)
    assert await exit_code(p, 30) == 0, p.output()
    for pid in pids:
        await until(lambda pid=pid: not _alive(pid), f"worker process {pid} is gone")


async def _workers_seen(ep: Remote, n: int) -> bool:
    w = (await health(ep))["workers"]
    return bool(w["idle"] + w["running"] == n)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): it has exited but waits for its parent.
    try:
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0
    except OSError:
        return False


async def test_serve_without_a_target_is_a_pure_queue_that_external_workers_drain(rig: Rig) -> None:
    p, url = serve(rig)
    await ready(p)
    ep = Remote(url, rig.http)
    job_id = await submit(ep, {"i": 7})
    await asyncio.sleep(0.5)
    assert (await status(ep, job_id))["status"] == "IN_QUEUE"
    assert (await health(ep))["workers"] == {"idle": 0, "running": 0, "initializing": 0}
    w = rig.worker("wk_jobs.py:single_echo", url, "external")
    body = await reaches(ep, job_id, "COMPLETED", proc=w)
    assert body["output"] == {"input": {"i": 7}, "worker": "external", "pid": w.proc.pid}
    assert body["workerId"] == "external"
