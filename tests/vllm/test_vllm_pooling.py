"""A pooling model (RUNNER=pooling, CONVERT=embed on the tiny Llama): /v1/embeddings answered by vLLM's own
embeddings serving, and worker-vllm-style ``{"embed": [...]}`` jobs. One pooling engine for the module."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import JobRunner

from handler_sdk.models import JobStatus
from handler_sdk.threads import ElasticPool
from handler_sdk.vllm import Engine, EngineConfig

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
async def pooling(tiny_model_dir: Path) -> AsyncIterator[JobRunner]:
    env = {"HANDLER_SDK_CACHE": str(tiny_model_dir.parent), "RUNNER": "pooling", "CONVERT": "embed"}
    engine = await Engine.start(EngineConfig.from_env(env))
    yield JobRunner(engine, ElasticPool())
    await asyncio.to_thread(engine.shutdown)


def tokens(runner: JobRunner, text: str) -> int:
    return len(runner.engine.llm.renderer.get_tokenizer().encode(text))


async def test_embeddings_route_returns_one_vector_per_input(pooling: JobRunner) -> None:
    ran = await pooling.run({"openai_route": "/v1/embeddings",
                             "openai_input": {"model": "tiny-llama", "input": ["hello", "a longer text"]}})  # fmt: skip
    assert ran.outcome.status is JobStatus.COMPLETED, ran.outcome
    assert ran.output["status_code"] == 200, ran.output
    body = ran.output["body"]
    assert [d["index"] for d in body["data"]] == [0, 1]
    vectors = [d["embedding"] for d in body["data"]]
    assert all(len(v) == 128 and all(isinstance(x, float) for x in v) for v in vectors)
    assert vectors[0] != vectors[1]
    assert body["usage"]["prompt_tokens"] == tokens(pooling, "hello") + tokens(pooling, "a longer text")


async def test_embed_job_returns_embeddings_and_input_tokens(pooling: JobRunner) -> None:
    ran = await pooling.run({"embed": ["hello", "there"]})
    assert ran.outcome.status is JobStatus.COMPLETED, ran.outcome
    out: dict[str, Any] = ran.output
    assert set(out) == {"embeddings", "input_tokens"}
    assert len(out["embeddings"]) == 2 and all(len(v) == 128 for v in out["embeddings"])
    assert out["input_tokens"] == tokens(pooling, "hello") + tokens(pooling, "there")
    one = await pooling.run({"embed": "hello"})
    assert one.output["embeddings"] == out["embeddings"][:1]


async def test_generation_on_a_pooling_model_is_a_400_saying_so(pooling: JobRunner) -> None:
    chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}]}
    ran = await pooling.run({"openai_route": "/v1/chat/completions", "openai_input": chat})
    assert ran.output["status_code"] == 400
    assert "pooling" in ran.output["body"]["error"]["message"]
    bad = await pooling.run({"embed": []})
    assert bad.outcome.status is JobStatus.FAILED and "embed" in (bad.outcome.error or "")
