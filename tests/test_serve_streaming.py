"""/stream over real HTTP: one cursor per job, ?from=N, item shapes and metrics, the 1 MiB split, aggregate_stream,
fast yields in order, a yielded error, and a non-generator job."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from handler_sdk.models import MAX_STREAM_BYTES, JobStatus, StreamReply
from tests.conftest import until

# The same tests on both job stores: the embedded default and a real redis-server.
pytestmark = pytest.mark.stores("sqlite", "redis")

MiB = 1 << 20


async def read_stream(ep: Any, job_id: str, query: str = "", method: str = "GET") -> StreamReply:
    code, body = await ep.call(method, f"stream/{job_id}{query}")
    assert code == 200, body
    assert set(body) == {"id", "status", "stream"}
    for item in body["stream"]:
        assert set(item) == {"output", "metrics"}
    return StreamReply.model_validate(body)


async def drain(ep: Any, job_id: str, timeout: float = 20) -> tuple[list[Any], list[dict[str, Any]]]:
    """Every item of the job's stream until it ends, through the typed client's stream iterator."""
    outputs: list[Any] = []
    metrics: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        async for item in ep.client.stream(job_id):
            outputs.append(item.output)
            metrics.append(item.metrics)
    return outputs, metrics


async def test_each_stream_call_returns_only_items_not_yet_returned(endpoint_factory, tmp_path):
    ep = await endpoint_factory("ep_stream.py:stepper")
    steps = tmp_path / "steps"
    steps.mkdir()
    _, body = await ep.post("run", {"input": {"dir": str(steps), "n": 4}})
    job_id = body["id"]
    (steps / "0").touch()

    async def first() -> StreamReply | None:
        r = await read_stream(ep, job_id)
        return r if r.stream else None

    r = await until(first)
    assert r.status is JobStatus.IN_PROGRESS
    assert [i.output for i in r.stream] == [{"i": 0}]
    # Nothing new: an empty list (after a short hold), the job still running.
    r = await read_stream(ep, job_id, method="POST")
    assert r.stream == [] and r.status is JobStatus.IN_PROGRESS

    # Items that arrive while nobody reads, and after the job has finished, still come back once each.
    (steps / "1").touch()
    (steps / "2").touch()
    (steps / "3").touch()
    await ep.wait_status(job_id, "COMPLETED")
    r = await read_stream(ep, job_id)
    assert r.status is JobStatus.COMPLETED
    assert [i.output for i in r.stream] == [{"i": 1}, {"i": 2}, {"i": 3}]
    r = await read_stream(ep, job_id)
    assert r.stream == [] and r.status is JobStatus.COMPLETED


async def test_from_rereads_without_moving_the_cursor(endpoint_factory, tmp_path):
    ep = await endpoint_factory("ep_stream.py:stepper")
    steps = tmp_path / "steps"
    steps.mkdir()
    _, body = await ep.post("run", {"input": {"dir": str(steps), "n": 3}})
    job_id = body["id"]
    (steps / "0").touch()
    (steps / "1").touch()

    async def two() -> StreamReply | None:
        r = await read_stream(ep, job_id, "?from=0")
        return r if len(r.stream) == 2 else None

    await until(two)
    r = await read_stream(ep, job_id)  # the cursor has not moved: both items are still new
    assert [i.output for i in r.stream] == [{"i": 0}, {"i": 1}]
    # A lost reply loses nothing: re-read from any index, as often as needed.
    for _ in range(2):
        r = await read_stream(ep, job_id, "?from=1", method="POST")
        assert [i.output for i in r.stream] == [{"i": 1}]
    (steps / "2").touch()
    await ep.wait_status(job_id, "COMPLETED")
    r = await read_stream(ep, job_id)
    assert [i.output for i in r.stream] == [{"i": 2}]
    r = await read_stream(ep, job_id, "?from=0")
    assert [i.output for i in r.stream] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert (await read_stream(ep, job_id, "?from=99")).stream == []
    code, bad = await ep.get(f"stream/{job_id}?from=x")
    assert code == 400 and "from" in bad["error"]


async def test_stream_items_carry_a_contiguous_stream_index_and_the_stream_scenario(endpoint_factory):
    ep = await endpoint_factory("kinds.py:sync_gen")
    job = await ep.client.run({"n": 5})
    outputs, metrics = await drain(ep, job.id)
    assert outputs == [{"i": i} for i in range(5)]
    assert [m["stream_index"] for m in metrics] == list(range(5))
    assert all(m["scenario"] == "stream" for m in metrics)
    # A generator without aggregate_stream has no final output.
    st = await ep.client.status(job.id)
    assert st.status is JobStatus.COMPLETED and "output" not in st.model_fields_set


async def test_a_job_that_is_not_a_generator_has_an_empty_stream(endpoint_factory):
    ep = await endpoint_factory("echo_async.py")
    _, body = await ep.post("runsync", {"input": {"x": 1}})
    r = await read_stream(ep, body["id"])
    assert r.status is JobStatus.COMPLETED and r.stream == []
    assert (await read_stream(ep, body["id"], "?from=0")).stream == []


async def test_a_3_mib_string_is_split_into_items_under_1_mib_and_aggregated_as_pieces(endpoint_factory):
    ep = await endpoint_factory("stream_3mb.py")
    job_id = (await ep.client.run({})).id
    outputs, metrics = await drain(ep, job_id)
    pieces, last = outputs[:-1], outputs[-1]
    assert last == {"done": True}
    assert len(pieces) >= 3
    assert all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == "x" * (3 * MiB)
    _, raw = await ep.get(f"stream/{job_id}?from=0")
    for item in raw["stream"]:
        assert len(orjson.dumps(item["output"])) <= MAX_STREAM_BYTES
        assert len(orjson.dumps(item)) <= MAX_STREAM_BYTES
    assert [m["stream_index"] for m in metrics] == list(range(len(outputs)))
    # aggregate_stream: the final output lists every item, the pieces as separate entries.
    st = await ep.client.status(job_id)
    assert st.status is JobStatus.COMPLETED
    assert st.output == outputs


async def test_fast_yields_arrive_in_order_and_are_never_merged(endpoint_factory):
    ep = await endpoint_factory("ep_stream.py:fast")
    n = 2000
    job = await ep.client.run({"n": n})
    outputs, metrics = await drain(ep, job.id)
    assert outputs == list(range(n))
    assert [m["stream_index"] for m in metrics] == list(range(n))
    assert (await ep.client.status(job.id)).output == list(range(n))


async def test_a_yielded_error_ends_the_stream_and_fails_the_job(endpoint_factory):
    ep = await endpoint_factory("ep_stream.py:yields_error")
    job = await ep.client.run({})
    outputs, _ = await drain(ep, job.id)
    assert outputs == [{"a": 1}]
    st = await ep.client.status(job.id)
    assert st.status is JobStatus.FAILED
    assert st.error is not None and "bad chunk" in st.error
    assert st.errorDetails is not None and st.errorDetails.error_message == "bad chunk"


async def test_a_non_string_item_over_1_mib_fails_the_job_saying_so(endpoint_factory):
    ep = await endpoint_factory("ep_stream.py:big_dict")
    reply = await ep.client.runsync({})
    assert reply.status is JobStatus.FAILED
    assert reply.error is not None and "over the" in reply.error and "limit" in reply.error
    assert reply.errorDetails is not None and reply.errorDetails.error_type == "OutputTooLarge"
    assert (await read_stream(ep, reply.id)).stream == []


async def test_stream_of_a_sync_job_reads_the_items_of_a_running_runsync(endpoint_factory, tmp_path: Path):
    ep = await endpoint_factory("ep_stream.py:stepper")
    steps = tmp_path / "steps"
    steps.mkdir()
    (steps / "0").touch()
    reply = await ep.client.runsync({"dir": str(steps), "n": 2}, wait_s=1)
    assert reply.id.startswith("sync-") and reply.status is JobStatus.IN_PROGRESS
    (steps / "1").touch()
    outputs, _ = await drain(ep, reply.id)
    assert outputs == [{"i": 0}, {"i": 1}]
