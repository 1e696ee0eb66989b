"""The ready-made handler on a real engine: outputs, usage counts, stream items, metrics, batching."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from handler_sdk import codec
from handler_sdk.job import Job
from handler_sdk.loader import load_handler
from handler_sdk.models import JobStatus
from handler_sdk.runner import run_job
from handler_sdk.threads import ElasticPool
from handler_sdk.vllm import ENGINE_METRIC_FIELDS, BatchPolicy

pytestmark = pytest.mark.vllm

PROMPT = "The quick brown fox"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]


def sampling(max_tokens: int, **extra: Any) -> dict[str, Any]:
    # Random weights emit </s> at random; ignore_eos makes every length exact.
    return {"max_tokens": max_tokens, "ignore_eos": True, **extra}


def tokens_of(engine: Any, text: str) -> int:
    return len(engine.llm.renderer.get_tokenizer().encode(text, add_special_tokens=False))


async def test_prompt_job_returns_one_text_and_exact_usage_counts(jobs: Any, engine: Any) -> None:
    ran = await jobs.run({"prompt": PROMPT, "sampling_params": sampling(12)})
    assert ran.outcome.status is JobStatus.COMPLETED, ran.outcome
    out = ran.output
    assert set(out) == {"text", "input_tokens", "output_tokens"}
    assert isinstance(out["text"], list) and len(out["text"]) == 1 and isinstance(out["text"][0], str)
    assert out["text"][0]
    assert out["input_tokens"] == tokens_of(engine, PROMPT)
    assert out["output_tokens"] == 12
    assert ran.items == []  # not streamed: nothing on /stream


async def test_messages_job_applies_the_chat_template(jobs: Any, engine: Any) -> None:
    ran = await jobs.run({"messages": MESSAGES, "sampling_params": sampling(5)})
    assert ran.outcome.status is JobStatus.COMPLETED, ran.outcome
    tok = engine.llm.renderer.get_tokenizer()
    templated = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert "assistant: " in templated  # the tiny model's template, so the count below is of the templated text
    assert ran.output["input_tokens"] == tokens_of(engine, templated)
    assert ran.output["output_tokens"] == 5


async def test_several_choices_give_one_text_each_and_count_all_tokens(jobs: Any) -> None:
    ran = await jobs.run({"prompt": PROMPT, "sampling_params": sampling(7, n=3, seed=1)})
    assert ran.outcome.status is JobStatus.COMPLETED, ran.outcome
    assert len(ran.output["text"]) == 3 and all(ran.output["text"])
    assert ran.output["output_tokens"] == 21


@pytest.mark.parametrize("source", [{"prompt": PROMPT}, {"messages": MESSAGES}], ids=["prompt", "messages"])
async def test_stream_items_are_ordered_and_add_up_to_the_final_output(jobs: Any, source: dict[str, Any]) -> None:
    ran = await jobs.run({**source, "stream": True, "sampling_params": sampling(60)})
    assert ran.outcome.status is JobStatus.COMPLETED, ran.outcome
    final = ran.output
    assert len(ran.items) >= 2
    # In order: the items' texts, concatenated in emission order, are the final text.
    assert "".join(item["text"][0] for item in ran.items) == final["text"][0]
    assert sum(item["output_tokens"] for item in ran.items) == final["output_tokens"] == 60
    assert ran.items[0]["input_tokens"] == final["input_tokens"] > 0
    assert all(item["input_tokens"] == 0 for item in ran.items[1:])
    for item, metrics in zip(ran.items, ran.metrics, strict=True):
        assert set(item) == {"text", "input_tokens", "output_tokens"}
        assert metrics is not None
        assert (metrics["input_tokens"], metrics["output_tokens"]) == (item["input_tokens"], item["output_tokens"])


async def test_stream_metrics_carry_every_engine_field_with_its_type(jobs: Any) -> None:
    ran = await jobs.run({"prompt": PROMPT, "stream": True, "sampling_params": sampling(80)})
    assert ran.outcome.status is JobStatus.COMPLETED, ran.outcome
    # stream_index and scenario are the endpoint's to add; the handler sends everything else.
    expected = {*ENGINE_METRIC_FIELDS, "input_tokens", "output_tokens"}
    for metrics in ran.metrics:
        assert metrics is not None and set(metrics) == expected
        for name in ("avg_gen_throughput", "avg_prompt_throughput", "gpu_kv_cache_usage"):
            assert isinstance(metrics[name], float), name
            assert metrics[name] >= 0
        for name in ("pending", "running", "input_tokens", "output_tokens"):
            assert isinstance(metrics[name], int) and not isinstance(metrics[name], bool), name
            assert metrics[name] >= 0
        assert metrics["cpu_kv_cache_usage"] == 0 and metrics["swapped"] == 0  # not in the V1 engine
        assert metrics["gpu_kv_cache_usage"] <= 1
    # Real values, not placeholders: this request was running and generating while its items went out.
    assert any(m is not None and m["running"] >= 1 for m in ran.metrics)
    assert any(m is not None and m["avg_gen_throughput"] > 0 for m in ran.metrics)
    assert any(m is not None and m["avg_prompt_throughput"] > 0 for m in ran.metrics)


async def test_gpu_kv_cache_usage_is_positive_while_generating(jobs: Any) -> None:
    ran = await jobs.run({"prompt": PROMPT, "stream": True, "sampling_params": sampling(40)})
    assert any(m is not None and m["gpu_kv_cache_usage"] > 0 for m in ran.metrics), ran.metrics


async def test_batches_grow_from_the_minimum_by_the_growth_factor(jobs: Any) -> None:
    ran = await jobs.run({"prompt": PROMPT, "stream": True, "sampling_params": sampling(150)})
    sizes = [item["output_tokens"] for item in ran.items]
    planned = BatchPolicy(1, 50, 3).sizes()
    targets = [next(planned) for _ in sizes]  # 1, 3, 9, 27, 50, 50, ...
    assert sizes[0] == 1  # the first token goes out alone: fast time to first token
    # A fast consumer gets exactly the plan; a delta merged during a send can only make an item larger.
    assert all(size >= target for size, target in zip(sizes[:-1], targets, strict=False)), sizes
    assert len(sizes) >= 5, sizes


async def test_job_batch_knobs_override_the_handler_policy(jobs: Any) -> None:
    ran = await jobs.run(
        {
            "prompt": PROMPT,
            "stream": True,
            "sampling_params": sampling(30),
            "min_batch_size": 2,
            "max_batch_size": 4,
            "batch_size_growth_factor": 2,
        }
    )
    sizes = [item["output_tokens"] for item in ran.items]
    assert sizes[0] >= 2
    assert sum(sizes) == 30
    assert len(sizes) >= 6  # a 50-token cap would have needed only 3 or 4 items


async def test_slow_consumer_gets_merged_items_and_never_stalls_the_engine(
    jobs: Any, engine: Any, wait_for: Any
) -> None:
    finished_while_stalled: list[bool] = []

    async def stall_after_first(index: int, item: Any) -> None:
        if index == 0:
            # The network is stuck on item 0; the engine must finish the request anyway.
            finished_while_stalled.append(await wait_for(lambda: engine.unfinished() == 0, 30))

    ran = await jobs.run(
        {"prompt": PROMPT, "stream": True, "sampling_params": sampling(120)}, on_item=stall_after_first
    )
    assert finished_while_stalled == [True]
    assert ran.outcome.status is JobStatus.COMPLETED, ran.outcome
    sizes = [item["output_tokens"] for item in ran.items]
    # Everything generated during the stall arrives as one item, beyond the 50-token maximum.
    assert sizes == [1, 119]


async def test_cancel_mid_stream_aborts_the_vllm_request(jobs: Any, engine: Any, wait_for: Any) -> None:
    first = asyncio.Event()
    running_at_first: list[int] = []

    async def stall(index: int, item: Any) -> None:
        running_at_first.append(engine.unfinished())
        first.set()
        await asyncio.Event().wait()  # a consumer that never reads again

    task = asyncio.create_task(
        jobs.run({"prompt": PROMPT, "stream": True, "sampling_params": sampling(2000)}, on_item=stall)
    )
    await asyncio.wait_for(first.wait(), 60)
    assert running_at_first == [1]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # 2000 tokens take seconds on a CPU: only an abort frees the request this fast.
    assert await wait_for(lambda: engine.unfinished() == 0, 1.0)


async def test_timeout_aborts_the_vllm_request_and_ends_timed_out(jobs: Any, engine: Any, wait_for: Any) -> None:
    seen_running: list[int] = []

    async def note(index: int, item: Any) -> None:
        seen_running.append(engine.unfinished())

    ran = await jobs.run(
        {"prompt": PROMPT, "stream": True, "sampling_params": sampling(2000)}, timeout=0.5, on_item=note
    )
    assert ran.outcome.status is JobStatus.TIMED_OUT, ran.outcome
    assert seen_running and seen_running[0] == 1
    assert sum(item["output_tokens"] for item in ran.items) < 2000
    assert await wait_for(lambda: engine.unfinished() == 0, 1.0)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"temperature": "hot"}, "sampling_params.temperature"),
        ({"top_p": 2.0}, "sampling_params.top_p"),
        ({"max_tokens": 0}, "sampling_params.max_tokens"),
        ({"temprature": 0.5}, "sampling_params.temprature"),
    ],
    ids=["wrong-type", "out-of-range", "below-minimum", "unknown-field"],
)
async def test_invalid_sampling_param_fails_the_job_naming_the_field(
    jobs: Any, engine: Any, params: dict[str, Any], field: str
) -> None:
    ran = await jobs.run({"prompt": PROMPT, "sampling_params": params})
    assert ran.outcome.status is JobStatus.FAILED
    assert ran.outcome.error is not None and ran.outcome.error.startswith("InvalidInput: ")
    assert field in ran.outcome.error
    assert engine.unfinished() == 0


@pytest.mark.parametrize(
    ("job_input", "expected"),
    [
        ({"sampling_params": {}}, "exactly one of"),
        ({"prompt": "a", "messages": MESSAGES}, "exactly one of"),
        ({"prompt": "a", "strem": True}, "strem"),
        ("just a string", "must be an object"),
    ],
    ids=["neither", "both", "unknown-key", "not-an-object"],
)
async def test_malformed_job_input_fails_clearly(jobs: Any, job_input: Any, expected: str) -> None:
    ran = await jobs.run(job_input)
    assert ran.outcome.status is JobStatus.FAILED
    assert ran.outcome.error is not None and expected in ran.outcome.error


async def test_concurrent_jobs_each_get_their_own_counts(jobs: Any, engine: Any) -> None:
    runs = await asyncio.gather(
        *(jobs.run({"prompt": f"{PROMPT} {i}", "stream": True, "sampling_params": sampling(10 + i)}) for i in range(4))
    )
    for i, ran in enumerate(runs):
        assert ran.outcome.status is JobStatus.COMPLETED
        assert ran.output["output_tokens"] == sum(item["output_tokens"] for item in ran.items) == 10 + i
    assert engine.unfinished() == 0


async def test_the_custom_handler_example_runs_on_the_adapter(engine: Any) -> None:
    example = load_handler(str(Path(__file__).resolve().parents[2] / "examples" / "vllm_custom.py"))
    counts: list[int] = []

    async def emit(item: Any) -> None:
        counts.append(codec.loads(item.output)["output_tokens"])

    job = Job({"id": "example-1", "input": {"question": "Why?", "max_tokens": 6}}, state=engine)
    outcome = await run_job(example, job, emit=emit, pool=ElasticPool())
    assert outcome.status is JobStatus.COMPLETED, outcome
    final = codec.loads(outcome.output)
    assert 1 <= final["output_tokens"] <= 6  # the random model may end early with </s>
    assert sum(counts) == final["output_tokens"]
    bad = await run_job(example, Job({"id": "example-2", "input": {}}, state=engine), emit=emit, pool=ElasticPool())
    assert bad.status is JobStatus.FAILED and "question" in (bad.error or "")
