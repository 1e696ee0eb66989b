"""Benchmark 8: non-streamed generation through /runsync against raw ``AsyncLLM`` in one process.

The tiny CPU model, the same engine settings on both sides (float32, eager, max_model_len 2048, a 64 MiB KV
cache), the same requests: 16 concurrent prompts of 128 tokens each (``ignore_eos``), not streamed.

* (a) ``benchmarks/raw_asyncllm.py``: vLLM's ``AsyncLLM.generate`` called directly, 16 at once (the yardstick);
* (b) ``python -m handler_sdk.serve handler_sdk.vllm`` with ``MODEL_NAME=DIR``: 16 concurrent ``POST /runsync``.

Tokens/s is the wave's generated tokens over its wall time. Both are started together and measured in alternating
rounds, one at a time. Target: (b) >= 0.95 x (a).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import aiohttp

from .common import PY, Proc, Run, Section, Target, free_port, http_json, ratios, serve_cmd, stop_all, wait_until

__all__ = ["run"]

CONCURRENCY = 16
TOKENS = 128
ROUNDS = 5
PROMPT = "The worker takes a job from the queue and"


async def _wave(base: str, n: int, tokens: int) -> tuple[int, float]:
    body = {"input": {"prompt": PROMPT, "sampling_params": {"max_tokens": tokens, "ignore_eos": True}}}
    async with aiohttp.ClientSession() as s:

        async def one() -> int:
            async with s.post(f"{base}/runsync", json=body, timeout=aiohttp.ClientTimeout(total=600)) as r:
                out = await r.json()
            if out.get("status") != "COMPLETED":
                raise RuntimeError(f"/runsync answered {out}")
            return int(out["output"]["output_tokens"])

        t0 = time.monotonic()
        total = sum(await asyncio.gather(*(one() for _ in range(n))))
        return total, time.monotonic() - t0


def _reply(raw: subprocess.Popen[str], prefix: str) -> str | None:
    """The raw side's next line that starts with ``prefix``; vLLM logs to stdout too, and those lines are skipped."""
    assert raw.stdout is not None
    for line in raw.stdout:
        if line.startswith(prefix):
            return line
    return None


def _ready(base: str) -> bool:
    try:
        w = http_json(f"{base}/health")["workers"]
    except OSError:
        return False
    return bool(w["idle"] + w["running"] >= 1)


def run(run: Run) -> Section:
    sec = Section("vllm_runsync", "8. Non-streamed generation: /runsync vs raw AsyncLLM")
    rounds, n, tokens = (2, 4, 8) if run.quick else (ROUNDS, CONCURRENCY, TOKENS)
    sec.params = {"concurrency": n, "max_tokens": tokens, "rounds": rounds, "stream": False}
    d = run.dir("vllm_runsync")
    port = free_port()
    base = f"http://127.0.0.1:{port}/v2/local"
    if run.quick:
        target, model_arg, env = str(Path(__file__).with_name("fake_llm.py")), "--fake", {}
    else:
        from handler_sdk.vllm.tiny import build_tiny_model

        model = str(build_tiny_model(run.dir("vllm_runsync_model") / "tiny-llama"))
        target, model_arg = "handler_sdk.vllm", model
        env = {"MODEL_NAME": model, "DTYPE": "float32", "ENFORCE_EAGER": "true", "MAX_MODEL_LEN": "2048",
               "KV_CACHE_MEMORY_BYTES": str(64 << 20), "VLLM_NO_USAGE_STATS": "1"}  # fmt: skip
    serve = Proc(serve_cmd(target, port, d / "data"), log=d / "serve.log", env={**env, "MAX_CONCURRENCY": str(n)})
    raw = subprocess.Popen(
        [PY, "-m", "benchmarks.raw_asyncllm", model_arg], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=(d / "raw.log").open("wb"), text=True, env={**os.environ, **env},
    )  # fmt: skip
    try:
        assert raw.stdout is not None and raw.stdin is not None
        if _reply(raw, "ready") is None:
            raise RuntimeError(f"raw AsyncLLM did not start:\n{(d / 'raw.log').read_text()[-3000:]}")
        wait_until(lambda: _ready(base), 600, "serve's engine to start", serve)
        asyncio.run(_wave(base, n, tokens))  # warm-up, both sides
        raw.stdin.write(f"{n} {tokens}\n")
        raw.stdin.flush()
        _reply(raw, "{")
        a, b = sec.figure("(a) raw AsyncLLM", "tokens/s"), sec.figure("(b) /runsync", "tokens/s")
        for i in range(rounds):
            run.log(f"vllm_runsync round {i + 1}/{rounds}")
            raw.stdin.write(f"{n} {tokens}\n")
            raw.stdin.flush()
            got = json.loads(_reply(raw, "{") or "{}")
            a.values.append(got["tokens"] / got["seconds"])
            total, seconds = asyncio.run(_wave(base, n, tokens))
            b.values.append(total / seconds)
    finally:
        if raw.stdin is not None:
            raw.stdin.close()
        try:
            raw.wait(60)
        except subprocess.TimeoutExpired:
            raw.kill()
        stop_all([serve])
    ratio = sec.figure("(b) / (a)", "ratio")
    ratio.values = ratios(b.values, a.values)
    sec.targets.append(Target("/runsync tokens/s over raw AsyncLLM's", ratio, 0.95))
    sec.plot = _plot(run, sec)
    return sec


def _plot(run: Run, sec: Section) -> str | None:
    from .report import bar_plot

    a, b = sec.figures[0], sec.figures[1]
    return bar_plot(run, "vllm_runsync", sec.title, [("tokens/s", [f"{sec.params['concurrency']} jobs"],
                                                      {"(a) raw AsyncLLM": [a], "(b) /runsync": [b]})])  # fmt: skip
