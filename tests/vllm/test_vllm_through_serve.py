"""The main job end to end: ``python -m handler_sdk.serve handler_sdk.vllm`` in its own process, on the tiny
default model, driven by the official ``openai`` client and by plain HTTP (/run + /stream, /runsync)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import NotFoundError, OpenAI

from tests.conftest import Proc, free_port, wait_for_line

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def serving(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """The module's serve process and its base URL."""

    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_NAME", "TOKENIZER_NAME", "MAX_MODEL_LEN")}
    env.update(HANDLER_SDK_CACHE=str(tiny_model_dir.parent), PYTHONUNBUFFERED="1", VLLM_NO_USAGE_STATS="1")
    args = [sys.executable, "-m", "handler_sdk.serve", "handler_sdk.vllm", "--port", str(port), "--api-key", KEY]
    args += ["--data-dir", str(log.parent / "data")]
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    proc = Proc(p, log)
    try:
        wait_for_line(proc, "endpoint ready", timeout=120)
        base = f"http://127.0.0.1:{port}/v2/local"
        # The setup hook loads the engine after the port opens: wait until the worker is no longer initializing.
        deadline = time.monotonic() + 240
        while True:
            h = httpx.get(f"{base}/health", headers={"Authorization": f"Bearer {KEY}"}).json()
            if h["workers"]["idle"] + h["workers"]["running"] >= 1:
                break
            assert p.poll() is None, proc.output()
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.5)
        yield base, p
    finally:
        p.terminate()
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
        assert p.returncode == 0, proc.output()[-3000:]


@pytest.fixture
def served(serving: tuple[str, Any]) -> str:
    return serving[0]


@pytest.fixture
def serve_process(serving: tuple[str, Any]) -> Any:
    return serving[1]


@pytest.fixture
def client(served: str) -> OpenAI:
    return OpenAI(base_url=f"{served}/openai/v1", api_key=KEY, max_retries=0)


def test_openai_models_list_names_the_served_model(client: OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [models.data[0].id]
    assert models.data[0].id


def test_openai_chat_completion_without_stream_returns_a_choice_with_usage(client: OpenAI) -> None:
    model = client.models.list().data[0].id
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=8, extra_body={"ignore_eos": True}
    )
    assert len(r.choices) == 1
    assert r.usage is not None and r.usage.completion_tokens == 8


def test_openai_chat_completion_streams_server_sent_events_chunk_by_chunk(client: OpenAI) -> None:
    model = client.models.list().data[0].id
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=12,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    assert len(chunks) >= 3  # role chunk, several content chunks, a finish chunk
    assert chunks[-1].choices[0].finish_reason == "length"


def test_openai_completions_with_and_without_stream(client: OpenAI) -> None:
    model = client.models.list().data[0].id
    r = client.completions.create(model=model, prompt="abc", max_tokens=5, extra_body={"ignore_eos": True})
    assert r.usage is not None and r.usage.completion_tokens == 5
    parts = list(
        client.completions.create(model=model, prompt="abc", max_tokens=5, stream=True, extra_body={"ignore_eos": True})
    )
    assert "".join(p.choices[0].text for p in parts if p.choices) is not None
    assert any(p.choices and p.choices[0].finish_reason == "length" for p in parts)


def test_openai_unknown_model_is_a_404_in_openai_error_shape(client: OpenAI) -> None:
    with pytest.raises(NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404


def test_openai_max_tokens_over_the_context_is_a_400(client: OpenAI) -> None:
    import openai

    model = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model, prompt="abc", max_tokens=10**6)
    assert e.value.status_code == 400


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_stream_job_items_carry_every_seed_metric_and_add_up_to_the_final_total(served: str) -> None:
    body = {"input": {"prompt": "hello", "stream": True, "sampling_params": {"max_tokens": 30, "ignore_eos": True}}}
    job_id = httpx.post(f"{served}/run", json=body, headers=_auth()).json()["id"]
    items: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while True:
        r = httpx.get(f"{served}/stream/{job_id}", headers=_auth()).json()
        items += r["stream"]
        if r["status"] == "COMPLETED" and not r["stream"]:
            break
        assert r["status"] in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED"), r
        assert time.monotonic() < deadline
    final = httpx.get(f"{served}/status/{job_id}", headers=_auth()).json()
    assert final["status"] == "COMPLETED"
    assert [i["metrics"]["stream_index"] for i in items] == list(range(len(items)))
    fields = {"avg_gen_throughput", "avg_prompt_throughput", "cpu_kv_cache_usage", "gpu_kv_cache_usage",
              "input_tokens", "output_tokens", "pending", "running", "scenario", "stream_index", "swapped"}  # fmt: skip
    for i in items:
        assert fields <= set(i["metrics"]), i
        assert i["metrics"]["scenario"] == "stream"
    assert sum(i["output"]["output_tokens"] for i in items) == final["output"]["output_tokens"] == 30
    assert items[0]["output"]["input_tokens"] == final["output"]["input_tokens"] > 0
    assert set(final["output"]) == {"text", "input_tokens", "output_tokens"}


def test_runsync_prompt_returns_text_and_token_counts(served: str) -> None:
    body = {"input": {"prompt": "hello", "sampling_params": {"max_tokens": 4, "ignore_eos": True}}}
    r = httpx.post(f"{served}/runsync", json=body, headers=_auth(), timeout=60).json()
    assert r["status"] == "COMPLETED", r
    assert r["output"]["output_tokens"] == 4 and len(r["output"]["text"]) == 1


def test_sigterm_drains_generations_in_flight_before_the_engine_stops(served: str, serve_process: Any) -> None:
    """Last in this module: it stops the module's serve. SIGTERM lets the running generation finish (the drain
    deadline is 30 s) and only then stops the engine; the process exits 0 (checked by the fixture)."""
    body = {"input": {"prompt": "hello", "sampling_params": {"max_tokens": 400, "ignore_eos": True}}}
    job_id = httpx.post(f"{served}/run", json=body, headers=_auth()).json()["id"]
    deadline = time.monotonic() + 60
    while httpx.get(f"{served}/status/{job_id}", headers=_auth()).json()["status"] != "IN_PROGRESS":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    serve_process.terminate()
    assert serve_process.wait(90) == 0
    # The journal outlives the process: a fresh serve on it (no handler, so no engine) shows how the job ended.
    port = free_port()
    data = Path(serve_process.args[serve_process.args.index("--data-dir") + 1])
    again = subprocess.Popen([sys.executable, "-m", "handler_sdk.serve", "--port", str(port), "--data-dir", str(data)])
    try:
        base = f"http://127.0.0.1:{port}/v2/local"
        until = time.monotonic() + 60
        while True:
            try:
                final = httpx.get(f"{base}/status/{job_id}").json()
                break
            except httpx.TransportError:
                assert time.monotonic() < until and again.poll() is None
                time.sleep(0.2)
    finally:
        again.terminate()
        again.wait(30)
    assert final["status"] == "COMPLETED", final
    assert final["output"]["output_tokens"] == 400
