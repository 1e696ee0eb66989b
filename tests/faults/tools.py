"""Helpers for the fault scenarios: serve and workers as processes, raw sockets, polling."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
HANDLERS = Path(__file__).resolve().parent / "handlers.py"


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    log: Path
    port: int
    endpoint: str = "local"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/{self.endpoint}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[bytes]:
    full = {**os.environ, "PYTHONUNBUFFERED": "1", "HANDLER_SDK_LOG_FORMAT": "plain", **(env or {})}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=full, cwd=ROOT, **kw)


def start_serve(tmp: Path, *args: str, target: str | None = None, name: str = "serve", port: int | None = None,
                env: dict[str, str] | None = None, **kw: Any) -> Serve:  # fmt: skip
    port = port or free_port()
    cmd = ["-m", "handler_sdk.serve", *([target] if target else []), "--port", str(port), *args]
    log = tmp / f"{name}.log"
    s = Serve(spawn(cmd, log, env, **kw), log, port)
    wait_line(s.proc, log, "endpoint ready")
    return s


def start_worker(url: str, target: str, log: Path, worker_id: str, **env: str) -> subprocess.Popen[bytes]:
    e = {"HANDLER_SDK_ENDPOINT_URL": url, "HANDLER_SDK_WORKER_ID": worker_id,
         "HANDLER_SDK_SPOOL_DIR": str(log.parent / f"spool-{worker_id}"), **env}  # fmt: skip
    return spawn(["-m", "handler_sdk.worker", target], log, e)


def wait_line(proc: subprocess.Popen[bytes], log: Path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {text!r}:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} within {timeout}s:\n{log.read_text(errors='replace')}")


async def until(pred: Callable[[], Awaitable[Any]], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    value: Any = None
    while time.monotonic() < deadline:
        value = await pred()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} never held within {timeout}s (last {value!r})")


async def call(http: aiohttp.ClientSession, method: str, url: str, body: Any = None,
               timeout: float = 10, **kw: Any) -> tuple[int, Any, Any]:  # fmt: skip
    """(status, parsed JSON or None, headers), with a hard timeout so a hang fails instead of waiting."""
    async with http.request(method, url, json=body, timeout=aiohttp.ClientTimeout(total=timeout), **kw) as r:
        data = await r.read()
        try:
            parsed = await r.json(content_type=None) if data else None
        except ValueError:
            parsed = data
        return r.status, parsed, r.headers
