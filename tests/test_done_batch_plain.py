"""A job-done-batch of plain successes is read without pydantic: the same results, the same answers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from handler_sdk import codec
from handler_sdk.models import DoneBatchBody, JobStatus
from handler_sdk.serve.http.workers import plain_results

pytestmark = pytest.mark.stores("sqlite", "redis")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Fields a result may carry besides its id: a plain success has at most an output and status COMPLETED.
extra_fields = st.dictionaries(
    st.sampled_from(["output", "status", "error", "stopPod", "extra"]),
    st.one_of(json_values, st.sampled_from([s.value for s in JobStatus]), st.booleans()),
    max_size=3,
)
ids = st.text(max_size=12) | st.integers() | st.none()
result = st.builds(lambda i, rest: {"id": i, **rest}, ids, extra_fields) | json_values
bodies = st.builds(lambda rs, more: {"results": rs, **more}, st.lists(result, max_size=5), st.dictionaries(
    st.sampled_from(["more"]), json_values, max_size=1
)) | json_values  # fmt: skip


def _model_reading(raw: Any) -> list[tuple[str, Any, Any, Any, Any]] | None:
    try:
        results = DoneBatchBody.model_validate(raw).results
    except ValueError:
        return None
    return [(x.id, x.output, x.error, x.status, x.stopPod) for x in results]


@given(bodies)
@example({"results": [{"id": "a", "output": 2**70}, {"id": "b", "output": -(2**64) - 1}]})  # long ints, exact
@example({"results": [{"id": "ünïcode", "output": {"k": ["ß", "\u2603", {"deep": [[1, 2.5, None]]}]}}]})
@example({"results": [{"id": "a", "status": "COMPLETED", "output": 1}, {"id": "b"}]})
@example({"results": [{"id": "a", "output": 1}, {"id": "b", "error": "boom"}]})  # falls back for the error
@example({"results": [{"id": "a", "status": None}], "other": 1})
@example({"results": [{"id": "\ud800", "output": 1}]})  # not valid unicode: the model's to refuse
def test_the_plain_reading_gives_the_model_s_results_or_falls_back(raw: Any) -> None:
    plain = plain_results(raw)
    model = _model_reading(raw)
    if plain is None:
        return  # the model path judges it, as it always did
    assert model is not None
    assert [(i, out) for i, out, *_ in model] == plain
    assert all(
        err is None and status in (None, JobStatus.COMPLETED) and stop is None for _, _, err, status, stop in model
    )
    # The output written is the model's output written: integers beyond 64 bits stay exact.
    assert [codec.dumps(out) for _, out in plain] == [codec.dumps(out) for _, out, *_ in model]


def test_a_body_that_is_not_all_plain_successes_falls_back() -> None:
    assert plain_results({"results": [{"id": "a", "output": 1}]}) == [("a", 1)]
    assert plain_results({"results": [{"id": "a"}]}) == [("a", None)]
    for not_plain in (
        {"results": [{"id": "a", "output": 1}, {"id": "b", "error": "x"}]},
        {"results": [{"id": "a", "status": "FAILED"}]},
        {"results": [{"id": "a", "status": "COMPLETED", "stopPod": True}]},
        {"results": [{"id": "a", "output": 1, "extra": 2}]},
        {"results": [{"id": 1, "output": 1}]},
        {"results": "x"},
        [1, 2],
    ):
        assert plain_results(not_plain) is None


async def _taken(ep: Any, n: int) -> tuple[list[str], list[str]]:
    ids = [(await ep.post("run", {"input": {"i": i}}))[1]["id"] for i in range(n)]
    async with ep.http.get(f"{ep.url}/job-take-batch/w1?batch_size={n - 1}") as r:
        taken = [j["id"] for j in await r.json()]
    return taken, [i for i in ids if i not in taken]


async def _codes(ep: Any, results: list[dict[str, Any]]) -> list[tuple[str, int]]:
    async with ep.http.post(f"{ep.url}/job-done-batch/w1", json={"results": results}) as r:
        assert r.status == 200
        return [(x["id"], x["code"]) for x in (await r.json())["results"]]


async def test_a_plain_batch_records_its_results(endpoint_factory) -> None:
    ep = await endpoint_factory(None)
    taken, _ = await _taken(ep, 4)
    outputs = [{"n": 2**70}, "ünï", None]
    results = [{"id": job_id, "output": out} for job_id, out in zip(taken, outputs, strict=True)]
    results[2] = {"id": taken[2]}  # no output at all
    assert await _codes(ep, results) == [(job_id, 200) for job_id in taken]
    for job_id, out in zip(taken, outputs, strict=True):
        reply = (await ep.get(f"status/{job_id}"))[1]
        assert reply["status"] == "COMPLETED"
        assert reply.get("output") == out


async def test_stale_and_unknown_ids_in_a_plain_batch_are_answered_as_on_the_model_path(endpoint_factory) -> None:
    answers = []
    for extra in ({}, {"stopPod": None}):  # stopPod (even null) sends the batch down the model's path
        ep = await endpoint_factory(None)
        taken, queued = await _taken(ep, 3)
        results = [{"id": i, "output": 1, **extra} for i in (taken[0], queued[0], "no-such-job", taken[0])]
        codes = await _codes(ep, results)
        answers.append([code for _, code in codes])
        assert [i for i, _ in codes] == [taken[0], queued[0], "no-such-job", taken[0]]
        assert (await ep.get(f"status/{queued[0]}"))[1]["status"] == "IN_QUEUE"
        assert (await ep.get(f"status/{taken[1]}"))[1]["status"] == "IN_PROGRESS"
    assert answers[0] == answers[1] == [200, 409, 404, 409]
