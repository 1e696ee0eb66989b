"""vLLM's own OpenAI server and serve with the built-in vLLM handler, started side by side on one tiny model.

Benchmarks 3 (streaming) and 13 (vllm_openai) compare the two on the same model, flags and environment; what each
sends them differs, how they start does not. In a quick run both sides are one serve process on the fake engine
(benchmarks/fake_llm.py): the code is exercised, nothing is measured.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import PY, Proc, Run, free_port, http_json, http_ok, serve_cmd, stop_all, wait_until

__all__ = ["MODEL", "WEATHER", "Pair", "serve_ready", "start_pair", "vllm_env"]

MODEL = "tiny"  # the name both sides serve the model under
# The tool of the tool-calling requests (benchmark 13 and tests/vllm), bounded: random weights would otherwise fill
# a free string up to max_tokens.
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


@dataclass
class Pair:
    vllm: Proc  # in a quick run, serve again
    serve: Proc
    vllm_v1: str  # the yardstick's OpenAI base, ending in /v1
    serve_base: str  # serve's endpoint base, ending in /v2/local
    model: Path | None  # None in a quick run

    @property
    def serve_v1(self) -> str:
        return f"{self.serve_base}/openai/v1"


def vllm_env(work: Path) -> dict[str, str | None]:
    return {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_CACHE_ROOT": str(work / "vllm-cache"),
        "VLLM_LOGGING_LEVEL": "WARNING",
        "TOKENIZERS_PARALLELISM": "false",
    }


def serve_ready(base: str) -> bool:
    """serve answers /health with its worker started (the engine loaded)."""
    try:
        workers = http_json(f"{base}/health", timeout=2)["workers"]
    except Exception:
        return False
    return bool(workers.get("initializing", 0) == 0 and workers.get("idle", 0) + workers.get("running", 0) >= 1)


def start_pair(
    run: Run,
    work: Path,
    *,
    max_model_len: int,
    vllm_flags: Sequence[str] = (),
    serve_env: dict[str, str] | None = None,
) -> Pair:
    """Both sides, ready. ``vllm_flags`` go to vLLM's server; ``serve_env`` is the same configuration in the
    worker-vllm environment variables that the built-in handler reads."""
    port_a, port_b = free_port(), free_port()
    base = f"http://127.0.0.1:{port_b}/v2/local"
    if run.quick:
        serve = Proc(serve_cmd("benchmarks/fake_llm.py", port_b, work / "serve-data"), log=work / "serve.log")
        wait_until(lambda: serve_ready(base), 60, "serve (fake engine) ready", serve)
        return Pair(serve, serve, f"{base}/openai/v1", base, None)
    model = work / "tiny-llama"
    subprocess.run([PY, "-m", "handler_sdk.vllm.tiny", str(model)], check=True, capture_output=True, timeout=300)
    env = vllm_env(work)
    common = ["--dtype", "float32", "--enforce-eager", "--max-model-len", str(max_model_len)]
    vllm = Proc(
        [PY, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name", MODEL,
         *common, *vllm_flags, "--host", "127.0.0.1", "--port", str(port_a),
         "--uvicorn-log-level", "warning", "--disable-uvicorn-access-log"],
        env=env,
        log=work / "vllm-server.log",
    )  # fmt: skip
    ours_env = {
        **env,
        "MODEL_NAME": str(model),
        "OPENAI_SERVED_MODEL_NAME_OVERRIDE": MODEL,
        "DTYPE": "float32",
        "ENFORCE_EAGER": "true",
        "MAX_MODEL_LEN": str(max_model_len),
        "MAX_CONCURRENCY": "32",
        **(serve_env or {}),
    }
    serve = Proc(serve_cmd("handler_sdk.vllm", port_b, work / "serve-data"), env=ours_env, log=work / "serve.log")
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port_a}/v1/models"), 600, "vLLM's server ready", vllm, 0.5)
        wait_until(lambda: serve_ready(base), 600, "serve with the vLLM handler ready", serve, 0.5)
    except BaseException:
        stop_all([vllm, serve])
        raise
    return Pair(vllm, serve, f"http://127.0.0.1:{port_a}/v1", base, model)
