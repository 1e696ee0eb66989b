"""Benchmark 7: from the death of the engine to the exit of the process that runs it, in seconds.

The tiny CPU model (``python -m handler_sdk.vllm.tiny DIR``) runs a streamed generation (``ignore_eos``, 1800
tokens), then vLLM's EngineCore process is killed with SIGKILL (as the kernel's OOM killer would). Timed: kill ->
the job reads FAILED at the endpoint, and kill -> the process has exited (status 1), for

* (a) a standalone worker, ``python -m handler_sdk.worker handler_sdk.vllm``, against a plain-queue serve;
* (b) ``python -m handler_sdk.serve handler_sdk.vllm`` with its in-process worker.

``--quick`` runs the same code on a stand-in handler (``benchmarks/mortal_handler.py``) whose "engine core" is a
plain child process. Target: each exit within 5 s ("a few seconds", so that the container restarts).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from .common import PY, Figure, Proc, Run, Section, Target, free_port, http_json, serve_cmd, wait_until

__all__ = ["run"]

ROUNDS = 2
EXIT_BOUND_S = 5.0
ENGINE_ENV = {"DTYPE": "float32", "ENFORCE_EAGER": "true", "MAX_MODEL_LEN": "2048",
              "KV_CACHE_MEMORY_BYTES": str(64 << 20), "VLLM_NO_USAGE_STATS": "1"}  # fmt: skip


def _engine_core(pid: int) -> int:
    import psutil

    for child in psutil.Process(pid).children(recursive=True):
        if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
            return int(child.pid)
    raise RuntimeError("no EngineCore process under the worker")


def _ready(base: str) -> bool:
    try:
        w = http_json(f"{base}/health")["workers"]
    except OSError:
        return False
    return bool(w["idle"] + w["running"] >= 1)


def _status(base: str, job_id: str) -> str:
    try:
        return str(http_json(f"{base}/status/{job_id}")["status"])
    except OSError:
        return "unreachable"


def _one(run: Run, d: Path, target: str, env: dict[str, str | None], standalone: bool) -> tuple[float, float]:
    """One death: (seconds to the job's FAILED, seconds to the exit)."""
    port = free_port()
    queue = Proc(serve_cmd(None if standalone else target, port, d / "data"), log=d / "serve.log", env=env)
    base = f"http://127.0.0.1:{port}/v2/local"
    procs = [queue]
    try:
        victim = queue
        if standalone:
            wait_until(lambda: _ready_http(base), 60, "the queue to listen", queue)
            victim = Proc([PY, "-m", "handler_sdk.worker", target], log=d / "worker.log",
                          env={**env, "HANDLER_SDK_ENDPOINT_URL": base})  # fmt: skip
            procs.append(victim)
        wait_until(lambda: _ready(base), 600, "the engine to start", victim)
        body = {"input": {"prompt": "hello", "stream": True, "sampling_params": {"max_tokens": 1800,
                                                                                  "ignore_eos": True}}}  # fmt: skip
        job_id = http_json(f"{base}/run", _json(body))["id"]
        wait_until(lambda: _status(base, job_id) == "IN_PROGRESS", 60, "the job to start", victim)
        time.sleep(0.5)  # mid-stream
        core = _engine_core(victim.pid)
        killed = time.monotonic()
        os.kill(core, signal.SIGKILL)
        failed = float("nan")
        while victim.alive() and time.monotonic() - killed < 60:
            if failed != failed and standalone and _status(base, job_id) == "FAILED":
                failed = time.monotonic() - killed
            time.sleep(0.01)
        exited = time.monotonic() - killed
        if victim.p.returncode != 1:
            raise RuntimeError(f"{target} exited {victim.p.returncode}, not 1:\n{victim.output()}")
        return (failed if standalone else exited), exited
    finally:
        for p in procs:
            p.stop()


def _ready_http(base: str) -> bool:
    try:
        http_json(f"{base}/health")
    except OSError:
        return False
    return True


def _json(body: object) -> bytes:
    return json.dumps(body).encode()


def run(run: Run) -> Section:
    sec = Section("engine_death", "7. Engine death to process exit (SIGKILL of vLLM's EngineCore)")
    rounds = 1 if run.quick else ROUNDS
    sec.params = {"rounds": rounds, "kill": "SIGKILL of the EngineCore process, 0.5 s into a streamed job"}
    env: dict[str, str | None] = {"MODEL_NAME": None, "HANDLER_SDK_LOG_FORMAT": "plain"}
    if run.quick:
        target = str(Path(__file__).with_name("mortal_handler.py"))
    else:
        from handler_sdk.vllm.tiny import build_tiny_model

        model = build_tiny_model(run.dir("engine_death_model") / "tiny-llama")
        target = "handler_sdk.vllm"
        env = {**env, **ENGINE_ENV, "MODEL_NAME": str(model)}
    for i in range(rounds):
        for label, standalone in (("standalone worker", True), ("serve, in-process worker", False)):
            d = run.dir(f"engine_death_{i}_{'worker' if standalone else 'serve'}")
            run.log(f"engine_death round {i + 1}/{rounds}: {label}")
            failed, exited = _one(run, d, target, env, standalone)
            sec.figure(f"{label}: kill -> exit", "s").values.append(exited)
            if standalone:
                sec.figure(f"{label}: kill -> job FAILED", "s").values.append(failed)
    for f in [f for f in sec.figures if f.name.endswith("-> exit")]:
        sec.targets.append(Target(f"{f.name.split(':')[0]}: seconds from engine death to exit", f, EXIT_BOUND_S, "<="))
    sec.plot = _plot(run, sec)
    sec.notes.append(
        "The running job ends FAILED with 'WorkerDead: the vLLM engine died: its EngineCore process was killed by "
        "SIGKILL ...'; the process exits 1. Most of the time to exit is the worker's 2 s grace for jobs to fail on "
        "their own plus vLLM's shutdown of what is left of the engine."
    )
    return sec


def _plot(run: Run, sec: Section) -> str | None:
    from .report import bar_plot

    def fig(name: str) -> Figure | None:
        return next((f for f in sec.figures if f.name == name), None)

    w, s = "standalone worker", "serve, in-process worker"
    series = {"kill -> exit": [fig(f"{w}: kill -> exit"), fig(f"{s}: kill -> exit")],
              "kill -> job FAILED": [fig(f"{w}: kill -> job FAILED"), None]}  # fmt: skip
    return bar_plot(run, "engine_death", sec.title, [("seconds", [w, s], series)])
