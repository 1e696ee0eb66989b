"""Two or more real ``python -m handler_sdk.serve --store redis://...`` processes on one real redis-server: any
replica answers for any job, workers of one replica run jobs submitted on another, and a replica killed with
SIGKILL loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from handler_sdk.serve.state.redis_client import connect, key_prefix
from tests.conftest import HANDLERS, Proc, free_port, until, wait_for_line

pytestmark = pytest.mark.timeout(120)


class Replica:
    def __init__(self, proc: Proc, port: int, replica_id: str) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}/v2/local"
        self.id = replica_id


@pytest.fixture
def replica(process_factory: Callable[..., Proc], redis_url: str, tmp_path: Path) -> Callable[..., Replica]:
    """Start a serve replica on the test's Redis database; ``target`` None: a pure queue (no worker)."""

    def start(replica_id: str, target: str | None = None, *extra: str) -> Replica:
        port = free_port()
        args = ["-m", "handler_sdk.serve"] + ([str(HANDLERS / target)] if target else [])
        args += ["--store", redis_url, "--port", str(port), "--replica-id", replica_id, "--no-rate-limits",
                 "--data-dir", str(tmp_path / replica_id), "--hold-s", "0.5", *extra]  # fmt: skip
        p = process_factory(*args, name=replica_id)
        wait_for_line(p, "handler_sdk endpoint ready")
        return Replica(p, port, replica_id)

    return start


async def call(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    async with http.request(method, url, json=body) as r:
        data = await r.read()
        return r.status, (await r.json(content_type=None)) if data else None


async def status(http: aiohttp.ClientSession, rep: Replica, job_id: str) -> dict[str, Any]:
    code, body = await call(http, "GET", f"{rep.url}/status/{job_id}")
    assert code == 200, body
    return dict(body)


async def test_a_job_submitted_on_one_replica_is_read_streamed_cancelled_and_retried_on_another(
    replica: Callable[..., Replica], http: aiohttp.ClientSession
) -> None:
    a, b = replica("ra"), replica("rb")
    _, job = await call(http, "POST", f"{a.url}/run", {"input": {"n": 1}})
    assert (await status(http, b, job["id"]))["status"] == "IN_QUEUE"
    # A remote worker attached to b takes the job a queued, streams, and fails it.
    code, taken = await call(http, "GET", f"{b.url}/job-take/w1")
    assert (code, taken["id"]) == (200, job["id"])
    assert (await call(http, "POST", f"{b.url}/job-stream/w1/{job['id']}", {"output": "tok"}))[0] == 200
    assert (await call(http, "POST", f"{b.url}/job-done/w1/{job['id']}", {"error": "boom"}))[0] == 200
    code, streamed = await call(http, "GET", f"{a.url}/stream/{job['id']}")
    assert [i["output"] for i in streamed["stream"]] == ["tok"]
    assert (await status(http, a, job["id"]))["status"] == "FAILED"
    assert (await call(http, "POST", f"{a.url}/retry/{job['id']}"))[1]["status"] == "IN_QUEUE"
    assert (await status(http, b, job["id"]))["status"] == "IN_QUEUE"
    assert (await call(http, "POST", f"{b.url}/cancel/{job['id']}"))[1]["status"] == "CANCELLED"
    assert (await status(http, a, job["id"]))["status"] == "CANCELLED"


async def test_a_runsync_on_one_replica_is_answered_when_a_worker_of_another_finishes(
    replica: Callable[..., Replica], http: aiohttp.ClientSession
) -> None:
    a, _ = replica("ra"), replica("rb", "echo_async.py")
    code, body = await call(http, "POST", f"{a.url}/runsync?wait=30000", {"input": {"hi": 1}})
    assert code == 200 and body["status"] == "COMPLETED", body
    assert body["output"] == {"hi": 1}
    assert body["workerId"] == "rb-local"  # the replica id is in the in-process worker's id


async def test_a_standalone_worker_on_one_replica_runs_jobs_submitted_on_another(
    replica: Callable[..., Replica], process_factory: Callable[..., Proc], http: aiohttp.ClientSession
) -> None:
    a, b = replica("ra"), replica("rb")
    env = {"HANDLER_SDK_ENDPOINT_URL": b.url, "HANDLER_SDK_WORKER_ID": "standalone"}
    process_factory("-m", "handler_sdk.worker", str(HANDLERS / "echo_async.py"), env=env, name="worker")
    ids = [(await call(http, "POST", f"{a.url}/run", {"input": {"i": i}}))[1]["id"] for i in range(5)]

    async def all_done() -> bool:
        return all([(await status(http, a, i))["status"] == "COMPLETED" for i in ids])

    await until(all_done, 30)
    assert {(await status(http, b, i))["workerId"] for i in ids} == {"standalone"}


async def test_health_and_requests_are_global(replica: Callable[..., Replica], http: aiohttp.ClientSession) -> None:
    a, b = replica("ra"), replica("rb")
    for rep in (a, b, b):
        await call(http, "POST", f"{rep.url}/run", {"input": {}})
    for rep in (a, b):
        _, h = await call(http, "GET", f"{rep.url}/health")
        assert h["jobs"]["inQueue"] == 3
        _, rows = await call(http, "GET", f"{rep.url}/requests")
        assert rows["total"] == 3


async def test_a_replica_killed_mid_run_loses_no_job_and_the_others_keep_answering(
    replica: Callable[..., Replica], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    a = replica("ra", "ep_gate.py", "--lease-ms", "1500")
    _, running = await call(http, "POST", f"{a.url}/run", {"input": {"wait_for": str(gate), "tag": "r"}})
    _, queued = await call(http, "POST", f"{a.url}/run", {"input": {"tag": "q"}})

    async def started() -> bool:
        return (await status(http, a, running["id"]))["status"] == "IN_PROGRESS"

    await until(started, 20)
    os.kill(a.proc.proc.pid, signal.SIGKILL)
    a.proc.proc.wait(5)
    gate.touch()
    b = replica("rb", "ep_gate.py", "--lease-ms", "1500")
    assert (await call(http, "GET", f"{b.url}/health"))[0] == 200  # answering while a's lease runs out

    async def both_done() -> list[dict[str, Any]] | None:
        rows = [await status(http, b, j["id"]) for j in (running, queued)]
        return rows if all(r["status"] == "COMPLETED" for r in rows) else None

    rows = await until(both_done, 40)
    assert rows[0]["output"] == {"tag": "r"} and rows[0]["workerId"] == "rb-local"
    assert rows[0]["retries"] == 1  # requeued once, when ra's lease lapsed
    assert (await call(http, "GET", f"{b.url}/health"))[1]["jobs"]["retried"] == 1


async def test_a_lapsed_lease_is_requeued_exactly_once_whichever_replica_notices(
    replica: Callable[..., Replica], http: aiohttp.ClientSession
) -> None:
    reps = [replica(f"r{i}", None, "--lease-ms", "600") for i in range(3)]
    _, job = await call(http, "POST", f"{reps[0].url}/run", {"input": {}})
    assert (await call(http, "GET", f"{reps[1].url}/job-take/silent"))[0] == 200

    async def requeued() -> bool:
        return (await status(http, reps[2], job["id"]))["status"] == "IN_QUEUE"

    await until(requeued, 20)
    await asyncio.sleep(1.5)  # two more lease lengths: no replica requeues it again
    for rep in reps:
        _, h = await call(http, "GET", f"{rep.url}/health")
        assert h["jobs"]["retried"] == 1 and h["jobs"]["inQueue"] == 1
    assert (await status(http, reps[0], job["id"]))["retries"] == 1


async def test_jobs_queued_after_an_idle_replica_was_killed_all_go_to_live_ones(
    replica: Callable[..., Replica], http: aiohttp.ClientSession, redis_url: str
) -> None:
    # Takes held far longer than the test and a lease that outlives it: only a wake can end a held take, so a
    # wake sent to the dead replica and lost there would leave its job queued past the /runsync wait.
    long = ("--hold-s", "600", "--lease-ms", "600000")
    reps = [replica(f"r{i}", "echo_async.py", *long) for i in range(3)]
    r = connect(redis_url)
    try:

        async def all_idle() -> bool:
            return int(await r.zcard(key_prefix("local") + "idle")) == 3

        await until(all_idle, 20)
        os.kill(reps[0].proc.proc.pid, signal.SIGKILL)
        reps[0].proc.proc.wait(5)
        for i in range(4):  # enough to wake each of the three idle takers in turn, the dead one's included
            code, body = await call(http, "POST", f"{reps[1 + i % 2].url}/runsync?wait=20000", {"input": {"i": i}})
            assert (code, body["status"], body["output"]) == (200, "COMPLETED", {"i": i}), body
            assert body["workerId"] in ("r1-local", "r2-local")
        assert b"r0-local" not in await r.zrange(key_prefix("local") + "idle", 0, -1)  # skipped, and gone
    finally:
        await r.aclose()


async def test_a_job_queued_while_one_replica_is_busy_is_run_by_an_idle_one(
    replica: Callable[..., Replica], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    long = ("--hold-s", "600", "--lease-ms", "600000")  # only a wake can end a held take within the test
    a, b = replica("ra", "ep_gate.py", *long), replica("rb", "ep_gate.py", *long)
    gate = tmp_path / "gate"
    _, held = await call(http, "POST", f"{a.url}/run", {"input": {"wait_for": str(gate)}})

    async def running() -> dict[str, Any] | None:
        st = await status(http, a, held["id"])
        return st if st["status"] == "IN_PROGRESS" else None

    busy = (await until(running, 20))["workerId"]  # its one slot is taken: concurrency 1
    busy_rep = a if busy == "ra-local" else b
    for i in range(3):
        code, body = await call(http, "POST", f"{busy_rep.url}/runsync?wait=20000", {"input": {"tag": i}})
        assert (code, body["status"], body["output"]) == (200, "COMPLETED", {"tag": i}), body
        assert body["workerId"] != busy
    gate.touch()
