"""worker-vllm's job inputs through plain jobs: n > 1, logprobs, stop strings, seed, apply_chat_template and
use_openai_format, streamed and not, on the session engine."""

from __future__ import annotations

import json
from typing import Any

import pytest

from handler_sdk.models import JobStatus

pytestmark = pytest.mark.vllm

PROMPT = "The quick brown fox"


def completed(ran: Any) -> Any:
    assert ran.outcome.status is JobStatus.COMPLETED, ran.outcome
    return ran.output


@pytest.mark.parametrize("stream", [False, True])
async def test_logprobs_give_one_entry_per_token_per_choice_and_each_item_carries_its_own(
    jobs: Any, stream: bool
) -> None:
    params = {"max_tokens": 6, "ignore_eos": True, "n": 2, "seed": 3, "logprobs": 1}
    ran = await jobs.run({"prompt": PROMPT, "sampling_params": params, "stream": stream})
    out = completed(ran)
    assert len(out["logprobs"]) == 2 and all(len(choice) == 6 for choice in out["logprobs"])
    for choice, text in zip(out["logprobs"], out["text"], strict=True):
        assert all(set(e) == {"token", "logprob"} and e["logprob"] <= 0 for e in choice)
        assert all(isinstance(e["token"], str) for e in choice) and text  # a byte-level piece may decode as ""
    if stream:
        joined: list[list[Any]] = [[], []]
        for item in ran.items:
            assert sum(len(c) for c in item["logprobs"]) == item["output_tokens"]
            for i, entries in enumerate(item["logprobs"]):
                joined[i] += entries
        assert joined == out["logprobs"]


async def test_seed_makes_sampling_repeatable_and_n_gives_that_many_choices(jobs: Any) -> None:
    params = {"max_tokens": 8, "ignore_eos": True, "temperature": 1.0, "seed": 1234, "n": 3}
    first = completed(await jobs.run({"prompt": PROMPT, "sampling_params": params}))
    again = completed(await jobs.run({"prompt": PROMPT, "sampling_params": params}))
    assert len(first["text"]) == 3 and first["text"] == again["text"]
    other = completed(await jobs.run({"prompt": PROMPT, "sampling_params": {**params, "seed": 99}}))
    assert other["text"] != first["text"]


async def test_a_stop_string_ends_the_text_before_it(jobs: Any) -> None:
    params = {"max_tokens": 30, "ignore_eos": True, "temperature": 0}
    free = completed(await jobs.run({"prompt": PROMPT, "sampling_params": params}))["text"][0]
    stop = free[5:8]
    assert stop and stop in free
    cut = completed(await jobs.run({"prompt": PROMPT, "sampling_params": {**params, "stop": [stop]}}))
    assert cut["text"][0] == free[: free.index(stop)]
    assert cut["output_tokens"] < 30


@pytest.mark.parametrize("stream", [False, True])
async def test_apply_chat_template_templates_the_prompt_as_one_user_message(
    jobs: Any, engine: Any, stream: bool
) -> None:
    params = {"max_tokens": 3, "ignore_eos": True}
    ran = await jobs.run({"prompt": "hello", "apply_chat_template": True, "sampling_params": params, "stream": stream})
    tok = engine.llm.renderer.get_tokenizer()
    templated = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                        tokenize=False)  # fmt: skip
    assert completed(ran)["input_tokens"] == len(tok.encode(templated, add_special_tokens=False))
    assert completed(ran)["input_tokens"] > len(tok.encode("hello", add_special_tokens=False))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", ["messages", "prompt"])
async def test_use_openai_format_answers_in_the_openai_chat_or_completion_shape(
    jobs: Any, stream: bool, kind: str
) -> None:
    job: dict[str, Any] = {"use_openai_format": True, "stream": stream,
                           "sampling_params": {"max_tokens": 5, "ignore_eos": True}}  # fmt: skip
    job.update({"messages": [{"role": "user", "content": "hi"}]} if kind == "messages" else {"prompt": "hi"})
    ran = await jobs.run(job)
    assert ran.outcome.status is JobStatus.COMPLETED, ran.outcome
    expected = "chat.completion" if kind == "messages" else "text_completion"
    if not stream:
        assert ran.output["object"] == expected and ran.output["usage"]["completion_tokens"] == 5
        assert ran.items == []
        return
    assert ran.outcome.output is None
    assert ran.items and all(i["object"] == (expected + ".chunk" if kind == "messages" else expected)
                             for i in ran.items)  # fmt: skip
    assert any(c.get("finish_reason") == "length" for i in ran.items for c in i["choices"])
    json.dumps(ran.items)


async def test_use_openai_format_with_a_bad_request_fails_the_job_with_vllms_message(jobs: Any) -> None:
    ran = await jobs.run({"prompt": "hi", "use_openai_format": True, "sampling_params": {"max_tokens": 10**7}})
    assert ran.outcome.status is JobStatus.FAILED
    assert "max_tokens" in (ran.outcome.error or "") or "context" in (ran.outcome.error or ""), ran.outcome
