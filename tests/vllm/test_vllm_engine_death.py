"""An engine that dies while jobs run: every job in flight FAILS naming the engine, nothing more is taken, the
process exits non-zero, queued jobs stay queued, and an OpenAI stream ends with an OpenAI error event.

Three real engines die here, started at once (their start-up overlaps): ``serve`` with its in-process worker,
whose EngineCore is killed with SIGKILL mid-stream; a standalone worker, killed the same way; and a standalone
worker whose engine raises through a real logits processor (``faulty.RaiseAfter``). The serve one also proves
that a hub id resolves from runpod's model cache with no network (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
HUB_ID = "handler-sdk/tiny-llama"
# The tiny model's engine settings, spelled out: with MODEL_NAME set, the tiny defaults do not apply.
ENGINE_ENV = {"DTYPE": "float32", "ENFORCE_EAGER": "true", "MAX_MODEL_LEN": "2048",
              "KV_CACHE_MEMORY_BYTES": str(64 << 20)}  # fmt: skip
LONG = {"max_tokens": 1800, "ignore_eos": True}


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log: Path
    base: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@dataclass
class Processes:
    tmp: Path
    started: list[Process] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Process:
        log = self.tmp / f"{name}.log"
        full = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **env}
        for unset in ("MODEL_NAME", "TOKENIZER_NAME", "HANDLER_SDK_ENDPOINT_URL"):
            if unset not in env:
                full.pop(unset, None)
        with log.open("wb") as out:
            p = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=full, cwd=ROOT)
        self.started.append(Process(p, log))
        return self.started[-1]

    def queue(self, name: str) -> Process:
        """A serve with no handler: a plain queue for a standalone worker (no engine, starts in a second)."""
        port = free_port()
        p = self.start(name, ["-m", "handler_sdk.serve", "--port", str(port), "--data-dir", str(self.tmp / name),
                              "--no-rate-limits"], {})  # fmt: skip
        p.base = f"http://127.0.0.1:{port}/v2/local"
        return p


def runpod_cache(model_dir: Path, base: Path) -> None:
    """The tiny model placed as runpod caches hub models: ``BASE/huggingface-cache/hub/models--org--name``."""
    repo = base / "huggingface-cache" / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Process]]:
    tmp = tmp_path_factory.mktemp("death")
    procs = Processes(tmp)
    volume = tmp / "runpod-volume"
    runpod_cache(tiny_model_dir, volume)
    offline = {
        **ENGINE_ENV, "MODEL_NAME": HUB_ID, "BASE_PATH": str(volume), "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp / "empty-hf-home"), "MAX_CONCURRENCY": "2",
    }  # fmt: skip
    port = free_port()
    serve = procs.start("serve", ["-m", "handler_sdk.serve", "handler_sdk.vllm", "--port", str(port),
                                  "--data-dir", str(tmp / "serve-data"), "--no-rate-limits"], offline)  # fmt: skip
    serve.base = f"http://127.0.0.1:{port}/v2/local"
    out: dict[str, Process] = {"serve": serve}
    for name, extra in (
        ("killed", {}),
        ("raised", {"LOGITS_PROCESSORS": '["tests.vllm.faulty:RaiseAfter"]'}),
    ):
        queue = procs.queue(f"{name}-queue")
        _wait_http(queue)
        worker = procs.start(f"{name}-worker", ["-m", "handler_sdk.worker", "handler_sdk.vllm"],
                             {**offline, **extra, "HANDLER_SDK_ENDPOINT_URL": queue.base,
                              "HANDLER_SDK_WORKER_ID": name})  # fmt: skip
        worker.base = queue.base
        out[name], out[f"{name}-queue"] = worker, queue
    try:
        yield out
    finally:
        for p in procs.started:
            p.stop()


def _wait_http(p: Process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{p.base}/health", timeout=2)
            return
        except httpx.TransportError:
            assert p.proc.poll() is None, p.output()
            assert time.monotonic() < deadline, p.output()
            time.sleep(0.2)


def wait_ready(p: Process, timeout: float = 360) -> None:
    """Until the endpoint counts an idle worker: the engine has started."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            w = httpx.get(f"{p.base}/health", timeout=5).json()["workers"]
            if w["idle"] + w["running"] >= 1:
                return
        except httpx.TransportError:
            pass
        assert p.proc.poll() is None, p.output()[-4000:]
        assert time.monotonic() < deadline, p.output()[-4000:]
        time.sleep(0.5)


def engine_core(p: Process) -> psutil.Process:
    for child in psutil.Process(p.proc.pid).children(recursive=True):
        if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
            return child
    raise AssertionError("no EngineCore process under the worker")


def post(base: str, path: str, body: Any) -> Any:
    return httpx.post(f"{base}/{path}", json=body, timeout=30).json()


def status(base: str, job_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{base}/status/{job_id}", timeout=10).json())


def wait_status(base: str, job_id: str, *statuses: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st = status(base, job_id)
        if st["status"] in statuses:
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.1)


class SSE:
    """An OpenAI chat stream read in a thread: its events, as they arrive."""

    def __init__(self, base: str) -> None:
        self.events: list[Any] = []
        self.ended = threading.Event()
        body = {"model": HUB_ID, "messages": [{"role": "user", "content": "hi"}], "stream": True, **LONG}
        self.thread = threading.Thread(target=self._read, args=(base, body), daemon=True)
        self.thread.start()

    def _read(self, base: str, body: dict[str, Any]) -> None:
        try:
            with httpx.stream("POST", f"{base}/openai/v1/chat/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        data = line.removeprefix("data: ")
                        self.events.append(data if data == "[DONE]" else json.loads(data))
        finally:
            self.ended.set()


def until(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def check_stream_ended_with_an_engine_error(sse: SSE) -> None:
    assert sse.ended.wait(30), "the OpenAI stream hung after the engine died"
    assert sse.events[-1] == "[DONE]", sse.events[-3:]
    errors = [e for e in sse.events if isinstance(e, dict) and "error" in e]
    assert errors, sse.events[-3:]
    assert "engine died" in errors[-1]["error"]["message"], errors
    assert {"message", "type", "code"} <= set(errors[-1]["error"])
    assert any(isinstance(e, dict) and e.get("choices") for e in sse.events)  # it was mid-stream


def kill_mid_stream(p: Process, base: str) -> tuple[SSE, str, str, float]:
    """An OpenAI stream and a /run stream job running, a third job queued; then SIGKILL the EngineCore."""
    sse = SSE(base)
    running = post(base, "run", {"input": {"prompt": "hello", "stream": True, "sampling_params": LONG}})["id"]
    until(lambda: any(isinstance(e, dict) and e.get("choices") for e in sse.events))
    wait_status(base, running, "IN_PROGRESS")
    queued = post(base, "run", {"input": {"prompt": "queued", "sampling_params": {"max_tokens": 4}}})["id"]
    time.sleep(0.3)
    assert status(base, queued)["status"] == "IN_QUEUE"  # concurrency 2: both slots are busy
    engine_core(p).send_signal(signal.SIGKILL)
    return sse, running, queued, time.monotonic()


def test_serve_with_an_in_process_worker_fails_running_jobs_and_exits_non_zero_when_the_engine_core_is_killed(
    engines: dict[str, Process],
) -> None:
    serve = engines["serve"]
    wait_ready(serve)
    models = httpx.get(f"{serve.base}/openai/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == [HUB_ID]  # the hub id, loaded from runpod's cache offline
    assert httpx.get(f"{serve.base}/openai/health", timeout=30).status_code == 200
    sse, running, queued, killed_at = kill_mid_stream(serve, serve.base)
    check_stream_ended_with_an_engine_error(sse)
    rc = serve.proc.wait(60)
    print(f"serve exited {rc} {time.monotonic() - killed_at:.1f} s after the EngineCore was killed")
    assert rc != 0, serve.output()[-3000:]
    assert "the vLLM engine died" in serve.output()
    # The journal outlives the process: a fresh serve (no handler, so no engine) shows what happened.
    again = Processes(serve.log.parent).start(
        "serve-after", ["-m", "handler_sdk.serve", "--port", str(port := free_port()), "--data-dir",
                        str(serve.log.parent / "serve-data")], {})  # fmt: skip
    try:
        again.base = f"http://127.0.0.1:{port}/v2/local"
        _wait_http(again)
        st = status(again.base, running)
        assert st["status"] == "FAILED", st
        assert "the vLLM engine died" in st["error"] and "SIGKILL" in st["error"], st
        assert status(again.base, queued)["status"] == "IN_QUEUE"
    finally:
        again.stop()


def test_a_standalone_worker_fails_running_jobs_takes_no_more_and_exits_non_zero_when_the_engine_core_is_killed(
    engines: dict[str, Process],
) -> None:
    worker, queue = engines["killed"], engines["killed-queue"]
    wait_ready(queue)
    sse, running, queued, killed_at = kill_mid_stream(worker, queue.base)
    check_stream_ended_with_an_engine_error(sse)
    rc = worker.proc.wait(60)
    print(f"the worker exited {rc} {time.monotonic() - killed_at:.1f} s after the EngineCore was killed")
    assert rc == 1, worker.output()[-3000:]
    st = wait_status(queue.base, running, "FAILED")
    assert "the vLLM engine died" in st["error"] and "SIGKILL" in st["error"], st
    time.sleep(1)
    assert status(queue.base, queued)["status"] == "IN_QUEUE"  # never taken by the dying worker


def test_an_exception_inside_the_engine_fails_the_job_naming_the_engine_and_the_worker_exits_non_zero(
    engines: dict[str, Process],
) -> None:
    worker, queue = engines["raised"], engines["raised-queue"]
    wait_ready(queue)
    params = {**LONG, "extra_args": {"raise_after": 5}}
    job = post(queue.base, "run", {"input": {"prompt": "hello", "stream": True, "sampling_params": params}})["id"]
    st = wait_status(queue.base, job, "FAILED", "COMPLETED", timeout=120)
    assert st["status"] == "FAILED", st
    assert "the vLLM engine died" in st["error"], st
    assert worker.proc.wait(60) == 1, worker.output()[-3000:]
    assert "RaiseAfter raised inside the engine" in worker.output()  # the root cause is in the worker's log
