"""Fixture factories: real servers on loopback, real SQLite files, real worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from handler_sdk import loop as event_loop
from handler_sdk.client import AsyncEndpoint
from handler_sdk.handler import Handler
from handler_sdk.loader import load_handler
from handler_sdk.serve.server import ServeConfig, Server

# The real redis-server fixtures (redis_server, redis_url, redis_aof_server) and the webhook receiver.
pytest_plugins = ["redis_server", "webhook_receiver"]

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = Path(__file__).resolve().parent / "handlers"


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """The tests run on the loop serve and the worker would pick (HANDLER_SDK_LOOP): uvloop where installed,
    asyncio's own with HANDLER_SDK_LOOP=asyncio."""
    return {event_loop.loop_name(): event_loop.loop_factory() or asyncio.new_event_loop}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Endpoint:
    """A running endpoint and a client session pointed at it."""

    server: Server
    http: aiohttp.ClientSession
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def broker(self) -> Any:
        return self.server.broker

    @property
    def client(self) -> AsyncEndpoint:
        """The typed client (handler_sdk.client) on this endpoint, sharing the test's session."""
        cfg = self.server.cfg
        base = f"http://{cfg.host}:{self.server.port}/v2"
        return AsyncEndpoint(base, cfg.endpoint_id, cfg.api_key, session=self.http)

    async def call(self, method: str, op: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        kw.setdefault("headers", self.headers)
        async with self.http.request(method, f"{self.url}/{op}", json=body, **kw) as r:
            data = await r.read()
            return r.status, (await r.json(content_type=None)) if data else None

    async def post(self, op: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("POST", op, body, **kw)

    async def get(self, op: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("GET", op, **kw)

    async def wait_status(self, job_id: str, *statuses: str, timeout: float = 10) -> dict[str, Any]:
        """Poll the job (through the typed client) until its status is one of ``statuses``; its reply as JSON."""
        deadline = time.monotonic() + timeout
        client = self.client
        while True:
            reply = await client.status(job_id)
            if reply.status in statuses:
                return reply.model_dump(mode="json", exclude_unset=True)
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} never reached {statuses}; last {reply}")
            await asyncio.sleep(0.02)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


STORES = ("sqlite", "redis")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module (or test) marked ``stores("sqlite", "redis")`` runs its endpoint tests once per store: the same
    tests, not a copy for Redis. Unmarked, an endpoint runs on SQLite."""
    marks = list(metafunc.definition.iter_markers("stores"))
    if "store" not in metafunc.fixturenames or not marks:
        return
    metafunc.parametrize("store", [n for n in marks[0].args if n in STORES], indirect=True)


# The Redis half's share of the run (its tests' setup, call and teardown), printed at the end of every run: the
# issue's budget for it in CI is 4 minutes.
_redis_seconds = [0.0, 0]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "redis" in report.nodeid:
        _redis_seconds[0] += report.duration
        _redis_seconds[1] += report.when == "call"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    seconds, n = _redis_seconds
    if n:
        terminalreporter.write_line(f"redis store: {n} tests took {seconds:.0f} s (setup and teardown included)")


@pytest.fixture
def store(request: pytest.FixtureRequest) -> str:
    """The job store the endpoints of this test use: "sqlite", or the URL of a real redis-server's database."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return "sqlite"
    server = request.getfixturevalue("redis_server")
    return str(server.url).rsplit("/", 1)[0]


async def _flushed(url: str) -> str:
    import redis.asyncio as aioredis

    c: Any = aioredis.Redis.from_url(url)
    await c.flushdb()
    await c.aclose()
    return url


@pytest.fixture
async def endpoint_factory(
    tmp_path: Path, http: aiohttp.ClientSession, store: str
) -> AsyncIterator[Callable[..., Any]]:
    """``await endpoint_factory(target_or_handler, **ServeConfig fields)`` -> Endpoint on a free port.

    Targets are paths relative to tests/handlers (``"kinds.py:sync_echo"``) or Handler objects. Defaults suit
    tests: a SQLite journal in tmp_path (or, with the redis store, a flushed database of its own per endpoint),
    rate limits off, short holds.
    """
    servers: list[Server] = []
    dbs: dict[Any, int] = {}

    async def make(target: str | Handler | None = None, **overrides: Any) -> Endpoint:
        h = load_handler(str(HANDLERS / target)) if isinstance(target, str) else target
        cfg = ServeConfig(port=0, data_dir=tmp_path / f"data{len(servers)}", rate_limits=False, take_hold_s=0.5)

        cfg.client = type(cfg.client)(stream_hold_ms=200)
        for k, v in overrides.items():
            setattr(cfg, k, v)
        if store != "sqlite" and "store" not in overrides:
            # A database per data dir: endpoints of one test are apart, and one that restarts on the same data
            # dir finds its jobs again, as it would on SQLite.
            db = dbs.get(cfg.data_dir)
            if db is None:
                db = dbs[cfg.data_dir] = len(dbs) + 1
                await _flushed(f"{store}/{db}")
            cfg.store = f"{store}/{db}"
        server = Server(cfg, h)
        await server.start()
        servers.append(server)
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        return Endpoint(server, http, headers)

    yield make
    for s in servers:
        await s.close()


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def process_factory(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start ``python -m ...`` subprocesses (serve, worker) with output captured to a file; killed at teardown."""
    procs: list[Proc] = []

    def start(*args: str, env: dict[str, str] | None = None, name: str = "proc") -> Proc:
        log = tmp_path / f"{name}-{len(procs)}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            p = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
        procs.append(Proc(p, log))
        return procs[-1]

    yield start
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.proc.wait(5)


async def until(pred: Callable[[], Awaitable[Any]], timeout: float = 10) -> Any:
    """Await ``pred()`` until it returns something truthy (and return that), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = await pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition never held within {timeout}s (last value {value!r})")
        await asyncio.sleep(0.02)


def wait_for_line(p: Proc, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in p.output():
            return
        if p.proc.poll() is not None:
            raise AssertionError(f"process exited {p.proc.returncode} before printing {text!r}:\n{p.output()}")
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} within {timeout}s:\n{p.output()}")
