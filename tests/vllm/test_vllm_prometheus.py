"""The vLLM engine's figures on /metrics: read at scrape time from the engine's own stat logger."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from handler_sdk.metrics import Exporter

pytestmark = pytest.mark.vllm


def _samples(text: str) -> dict[str, float]:
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


async def test_the_engines_tokens_and_gauges_are_exported_after_a_generation(jobs, wait_for):
    ex = Exporter("test")
    before = _samples(ex.render().decode())
    for name in ("handler_sdk_vllm_kv_cache_usage", "handler_sdk_vllm_running", "handler_sdk_vllm_pending",
                 "handler_sdk_vllm_prompt_tokens_total", "handler_sdk_vllm_generation_tokens_total"):  # fmt: skip
        assert name in before, name
    ran = await jobs.run({"prompt": "hello there", "sampling_params": {"max_tokens": 8, "ignore_eos": True}})
    assert ran.output["output_tokens"] == 8

    def counted() -> bool:
        after = _samples(ex.render().decode())
        gen = after["handler_sdk_vllm_generation_tokens_total"] - before["handler_sdk_vllm_generation_tokens_total"]
        return gen == 8

    assert await wait_for(counted, 5)
    after = _samples(ex.render().decode())
    prompt = after["handler_sdk_vllm_prompt_tokens_total"] - before["handler_sdk_vllm_prompt_tokens_total"]
    assert prompt == ran.output["input_tokens"]
    assert 0 <= after["handler_sdk_vllm_kv_cache_usage"] <= 1
    assert after["handler_sdk_vllm_running"] >= 0 and after["handler_sdk_vllm_pending"] >= 0
