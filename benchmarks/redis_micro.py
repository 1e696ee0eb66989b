"""The Redis engine alone, without serve or HTTP: round trips per job of each route's engine calls, and
redis-benchmark's own rates for the commands they use (the Redis benchmark's yardsticks, benchmarks/redis_state.py).

Round trips are counted in the client (``CountingConnection``: one per command sent or pipeline flushed), both
sides together: the client's routes and the worker's take and done, in one process with no other replica.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
from typing import Any

from redis.asyncio.connection import Connection

from handler_sdk.models import JobStatus
from handler_sdk.serve.state.limits import Limit
from handler_sdk.serve.state.redis_client import connect
from handler_sdk.serve.state.redis_jobs import RedisJobs, RedisJobsConfig
from handler_sdk.serve.state.redis_limits import RedisRateLimiter
from handler_sdk.serve.state.scripts import SCRIPTS

__all__ = ["CountingConnection", "redis_benchmark", "replica_round_trips", "round_trips"]

LIMITS = {g: Limit(10**9, 10**6) for g in ("run", "runsync", "status")}


class CountingConnection(Connection):
    """Counts what it sends: one command, or one pipeline flush, is one round trip. A new connection's handshake
    (HELLO, CLIENT SETINFO) is counted apart: a pool pays it once per connection, not per job."""

    sent = 0
    handshakes = 0

    @classmethod
    def reset(cls) -> None:
        cls.sent = cls.handshakes = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        head = bytes(command[0][:24]) if isinstance(command, list) else bytes(command[:24])
        if b"\r\nHELLO\r\n" in head or b"\r\nCLIENT\r\n" in head:
            CountingConnection.handshakes += 1
        else:
            CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


async def _engine(url: str, ep: str) -> tuple[RedisJobs, RedisRateLimiter]:
    client = connect(url, connection_class=CountingConnection)
    e = RedisJobs(client, ep, RedisJobsConfig())
    await e.open()
    return e, RedisRateLimiter(client, ep, LIMITS)


async def _close(e: RedisJobs) -> None:
    await e.close()
    await e.client.aclose()


async def run_job(e: RedisJobs, rl: RedisRateLimiter, i: int, *, stream: bool = False) -> None:
    """/run, a worker's take and done (a stream item too, if asked), and the client's /status or /stream."""
    await rl.acquire("run")
    await e.submit(f"r{i}", b'{"prompt":"hi"}')
    [t] = await e.take("w", 1)
    if stream:
        await e.stream("w", t.id, [b'"tok"'], [None])
    await e.done("w", t.id, JobStatus.COMPLETED, output=b'"ok"')
    await rl.acquire("status")
    if stream:
        await e.read_stream(t.id)
    else:
        await e.status(t.id)
    rl.release("run")
    rl.release("status")


async def runsync_job(e: RedisJobs, rl: RedisRateLimiter, worker: RedisJobs, i: int) -> None:
    """/runsync on one replica, its job taken and finished by a worker on another."""
    await rl.acquire("runsync")

    async def work() -> None:
        [t] = await worker.take("w", 1, wait=10)
        await worker.done("w", t.id, JobStatus.COMPLETED, output=b'"ok"')

    wt = asyncio.create_task(work())
    r = await e.submit_and_wait(f"s{i}", b'{"prompt":"hi"}', 10)
    await wt
    assert r is not None and r.status is JobStatus.COMPLETED
    rl.release("runsync")


async def round_trips(url: str, jobs: int = 200) -> dict[str, float]:
    """Round trips per job, both sides together (the worker's take and done included)."""
    out: dict[str, float] = {}
    e, rl = await _engine(url, "rt")
    w, _ = await _engine(url, "rt")
    try:
        for name in ("run", "run+stream", "runsync"):
            CountingConnection.reset()
            for i in range(jobs):
                if name == "runsync":
                    await runsync_job(e, rl, w, i)
                else:
                    await run_job(e, rl, i + (jobs if name == "run+stream" else 0), stream=name == "run+stream")
            out[name] = CountingConnection.sent / jobs
        CountingConnection.reset()
        for _ in range(jobs):
            await e.health()
        out["health"] = CountingConnection.sent / jobs
    finally:
        await _close(e)
        await _close(w)
    return out


async def replica_round_trips(url: str, n: int = 4, jobs: int = 20) -> dict[str, float]:
    """Round trips per job with ``n`` replicas on one endpoint, each with an idle worker holding a take open as the
    in-process worker does (concurrency 100, a long hold), both sides counted: /run on one replica with one
    /status read on the next once the job ended, and /runsync. Also the wakes the replicas passed on, per job."""
    ep = f"rtx{n}"
    engines = [await _engine(url, ep) for _ in range(n)]
    ended: dict[str, asyncio.Event] = {}

    async def worker(e: RedisJobs, wid: str) -> None:
        while True:
            for t in await e.take(wid, 100, wait=600):
                await e.done(wid, t.id, JobStatus.COMPLETED, output=b'"ok"')
                if t.id in ended:
                    ended[t.id].set()

    tasks = [asyncio.create_task(worker(e, f"w{i}")) for i, (e, _) in enumerate(engines)]
    out: dict[str, float] = {}
    try:
        e0 = engines[0][0]
        while await e0.client.zcard(e0.prefix + "idle") < n:  # every worker's first take found the queue empty
            await asyncio.sleep(0.01)
        CountingConnection.reset()
        for i in range(jobs):
            (e, rl), (e2, rl2) = engines[i % n], engines[(i + 1) % n]
            ended[f"r{i}"] = asyncio.Event()
            await rl.acquire("run")
            await e.submit(f"r{i}", b'{"prompt":"hi"}')
            rl.release("run")
            await asyncio.wait_for(ended[f"r{i}"].wait(), 10)
            await rl2.acquire("status")
            r = await e2.status(f"r{i}")
            rl2.release("status")
            assert r is not None and r.status is JobStatus.COMPLETED
        out["run"] = CountingConnection.sent / jobs
        CountingConnection.reset()
        for i in range(jobs):
            e, rl = engines[i % n]
            await rl.acquire("runsync")
            r = await e.submit_and_wait(f"s{i}", b'{"prompt":"hi"}', 10)
            rl.release("runsync")
            assert r is not None and r.status is JobStatus.COMPLETED
        out["runsync"] = CountingConnection.sent / jobs
        out["passed"] = sum(e.takes.passed for e, _ in engines) / (2 * jobs)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for e, _ in engines:
            await _close(e)
    return out


def redis_benchmark(url: str, requests: int = 30_000, rounds: int = 3) -> dict[str, tuple[float, float]]:
    """redis-benchmark's requests/s on this machine: PING, an empty script, and our submit and rate-limit calls."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return {}
    port = url.rsplit(":", 1)[1].split("/", maxsplit=1)[0]
    base = [exe, "-p", port, "-q", "-n", str(requests), "-c", "50", "-r", "100000000"]
    # Yardsticks: a script that does nothing, and submit as a plain script that defines its helpers on every
    # call (what the library, loaded once, saves).
    cli = [exe.replace("redis-benchmark", "redis-cli"), "-p", port]

    def load(src: str) -> str:
        return subprocess.run([*cli, "SCRIPT", "LOAD", src], capture_output=True, text=True, check=True).stdout.strip()

    submit_args = ["hsdk:{rb}:", "1", "id__rand_int__", "{}", "0", "0", "", "", "60000", ""]
    rl_args = ["hsdk:{rb}:", "1", "run", "1000000000", "10000"]
    cmds = {
        "PING": ["PING"],
        "EVALSHA return 1": ["EVALSHA", load("return 1"), "0"],
        "EVALSHA submit (helpers defined per call)": ["EVALSHA", load(SCRIPTS.eval_source["submit"]), "0",
                                                      *submit_args],
        "FCALL submit": ["FCALL", SCRIPTS.function["submit"], "0", *submit_args],
        "FCALL ratelimit": ["FCALL", SCRIPTS.function["ratelimit"], "0", *rl_args],
    }  # fmt: skip
    rps: dict[str, list[float]] = {name: [] for name in cmds}
    usec: dict[str, list[float]] = {name: [] for name in cmds}
    for r in range(rounds):  # alternating order: the machine's noise falls on every command alike
        for name, cmd in cmds.items() if r % 2 == 0 else reversed(cmds.items()):
            subprocess.run([*cli, "CONFIG", "RESETSTAT"], capture_output=True, check=True)
            text = subprocess.run([*base, *cmd], capture_output=True, text=True, check=True).stdout
            m = re.findall(r"([\d.]+) requests per second", text)
            rps[name].append(float(m[-1]) if m else float("nan"))
            stats = subprocess.run([*cli, "INFO", "commandstats"], capture_output=True, text=True, check=True).stdout
            u = re.search(rf"cmdstat_{cmd[0].lower()}:calls=\d+,usec=\d+,usec_per_call=([\d.]+)", stats)
            usec[name].append(float(u.group(1)) if u else float("nan"))
    return {name: (statistics.median(rps[name]), statistics.median(usec[name])) for name in cmds}
