"""A real redis-server for the tests: our own process on a free port in a temp dir, never the system's.

No config file is read: every setting is on the command line. ``--save ''`` (no snapshots) unless asked for
the AOF variant (``appendonly yes``, ``appendfsync everysec``). A missing redis-server fails the tests loudly
(it is never skipped: scripts/setup installs it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

REDIS_SERVER = os.environ.get("HANDLER_SDK_REDIS_SERVER", "redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process; ``kill9`` and ``restart`` (same dir, same port) for the crash tests."""

    def __init__(self, dir: Path, *, aof: bool = False) -> None:
        exe = shutil.which(REDIS_SERVER)
        if exe is None:
            pytest.fail(f"{REDIS_SERVER} is not installed (apt-get install redis-server); the Redis tests need it")
        self.exe = exe
        self.dir = dir
        self.aof = aof
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        argv = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--logfile", str(self.dir / "redis.log"), "--daemonize", "no",
                "--databases", "16"]  # fmt: skip
        if self.aof:
            argv += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            argv += ["--appendonly", "no"]
        return argv

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text() if (self.dir / "redis.log").exists() else ""
                raise RuntimeError(f"redis-server exited {self.proc.returncode}: {log[-2000:]}")
            if self._ping():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING in {timeout} s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill9(self) -> None:
        """SIGKILL: no shutdown, no final fsync."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        """Start again on the same dir and port, after a kill9 or a stop."""
        self.kill9()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


@contextlib.contextmanager
def redis_server_in(dir: Path, *, aof: bool = False) -> Iterator[RedisServer]:
    srv = RedisServer(dir, aof=aof)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server (no persistence) for the whole session; tests isolate by endpoint id and flushed DB."""
    with redis_server_in(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


@pytest.fixture
def redis_aof_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of its own with AOF appendfsync everysec, for the crash tests."""
    with redis_server_in(tmp_path, aof=True) as srv:
        yield srv


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> AsyncIterator[str]:
    """The session server's URL, its DB flushed before the test."""
    import redis.asyncio as aioredis

    c: Any = aioredis.Redis.from_url(redis_server.url)
    await c.flushdb()
    await c.aclose()
    yield redis_server.url
