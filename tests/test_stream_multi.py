"""The stream-multi extension: many jobs' stream items in one job-stream-batch request, each job's part judged
alone; and the worker's coalescer that fills those requests from every streaming job at once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from test_worker_protocol import Raw, leased

from handler_sdk.errors import StaleResult, TransportError
from handler_sdk.serve.http.workers import EXTENSIONS
from handler_sdk.worker.coalesce import Coalescer


@pytest.fixture
async def pure(endpoint_factory: Any) -> Any:
    return await endpoint_factory(None, take_hold_s=0.3)


async def stream_batch(w: Raw, body: Any) -> tuple[int, Any]:
    code, _, reply = await w.call("POST", f"job-stream-batch/{w.wid}", body=json.dumps(body).encode())
    return code, reply


async def test_serve_announces_stream_multi() -> None:
    assert "stream-multi" in EXTENSIONS.partition("ext=")[2].split(",")


async def test_each_jobs_part_lands_on_its_own_stream_in_order(pure: Any) -> None:
    w = Raw(pure)
    a, b = await leased(pure, w, 2)
    code, reply = await stream_batch(
        w,
        {"streams": [
            {"id": a, "outputs": ["a0", "a1"], "metrics": [{"tok": 1}, None]},
            {"id": b, "output": "b0"},
            {"id": a, "outputs": ["a2"]},
        ]},
    )  # fmt: skip
    assert code == 200
    assert reply["results"] == [
        {"id": a, "code": 200, "items": 2},
        {"id": b, "code": 200, "items": 1},
        {"id": a, "code": 200, "items": 3},
    ]
    _, body = await pure.get(f"stream/{a}")
    assert [c["output"] for c in body["stream"]] == ["a0", "a1", "a2"]
    assert body["stream"][0]["metrics"]["tok"] == 1
    assert [c["metrics"]["stream_index"] for c in body["stream"]] == [0, 1, 2]
    _, body = await pure.get(f"stream/{b}")
    assert [c["output"] for c in body["stream"]] == ["b0"]


async def test_a_bad_part_is_refused_alone_and_its_neighbours_still_land(pure: Any) -> None:
    w = Raw(pure)
    [a] = await leased(pure, w)
    code, reply = await stream_batch(
        w,
        {"streams": [
            {"id": "no-such-job", "outputs": ["x"]},
            {"id": a, "outputs": ["x", "y"], "metrics": [{}]},
            {"id": a, "nothing": 1},
            {"id": a, "outputs": ["ok"]},
        ]},
    )  # fmt: skip
    assert code == 200
    assert [r["code"] for r in reply["results"]] == [404, 400, 400, 200]
    _, body = await pure.get(f"stream/{a}")
    assert [c["output"] for c in body["stream"]] == ["ok"]
    # Another worker's job is a conflict, as job-stream answers it.
    code, reply = await stream_batch(Raw(pure, "w2"), {"streams": [{"id": a, "outputs": ["z"]}]})
    assert (code, [r["code"] for r in reply["results"]]) == (200, [409])


@pytest.mark.parametrize(
    "body", [[], {"streams": {}}, {"nothing": 1}, {"streams": [{"outputs": ["no id"]}]}, {"streams": [1]}]
)
async def test_a_malformed_job_stream_batch_body_is_400_naming_the_shape(pure: Any, body: Any) -> None:
    code, reply = await stream_batch(Raw(pure), body)
    assert code == 400
    assert 'job-stream-batch body must be {"streams"' in reply["error"]


# --- the worker's coalescer ---------------------------------------------------------------------------------


class Endpoint:
    """The send callable: records each request's pieces, answers from ``codes``, or fails when told to."""

    def __init__(self) -> None:
        self.requests: list[list[bytes]] = []
        self.codes: dict[str, int] = {}
        self.fail: TransportError | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, pieces: list[bytes]) -> dict[str, int]:
        self.requests.append(pieces)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return {json.loads(p)["id"]: self.codes.get(json.loads(p)["id"], 200) for p in pieces}


def piece(job_id: str, n: int = 0) -> bytes:
    return json.dumps({"id": job_id, "outputs": [n]}).encode()


async def test_pieces_queued_while_a_request_is_in_flight_leave_together_in_the_next() -> None:
    ep = Endpoint()
    c = Coalescer(ep.send, 1 << 20)
    ep.gate.clear()
    first = asyncio.create_task(c.put("a", piece("a")))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(c.put(j, piece(j))) for j in ("b", "c", "d")]
    await asyncio.sleep(0)
    ep.gate.set()
    await asyncio.gather(first, *rest)
    assert [[json.loads(p)["id"] for p in r] for r in ep.requests] == [["a"], ["b", "c", "d"]]


async def test_a_request_stays_within_max_bytes_but_carries_at_least_one_piece() -> None:
    ep = Endpoint()
    big = piece("big") + b" " * 100
    c = Coalescer(ep.send, len(big) + 10)
    ep.gate.clear()
    first = asyncio.create_task(c.put("a", piece("a")))
    await asyncio.sleep(0)
    others = [asyncio.create_task(c.put("big", big)), asyncio.create_task(c.put("b", piece("b")))]
    others.append(asyncio.create_task(c.put("c", piece("c"))))
    await asyncio.sleep(0)
    ep.gate.set()
    await asyncio.gather(first, *others)
    assert [[json.loads(p)["id"] for p in r] for r in ep.requests] == [["a"], ["big"], ["b", "c"]]


async def test_each_piece_gets_its_own_verdict() -> None:
    ep = Endpoint()
    ep.codes = {"gone": 404, "taken": 409, "bad": 400}
    c = Coalescer(ep.send, 1 << 20)
    ep.gate.clear()
    blocker = asyncio.create_task(c.put("ok0", piece("ok0")))
    await asyncio.sleep(0)
    tasks = {j: asyncio.create_task(c.put(j, piece(j))) for j in ("ok", "gone", "taken", "bad")}
    await asyncio.sleep(0)
    ep.gate.set()
    await blocker
    results = dict(zip(tasks, await asyncio.gather(*tasks.values(), return_exceptions=True), strict=True))
    assert results["ok"] is None
    assert isinstance(results["gone"], StaleResult)
    assert isinstance(results["taken"], StaleResult)
    assert isinstance(results["bad"], TransportError)
    assert len(ep.requests) == 2


async def test_a_failed_request_fails_every_piece_in_it_and_the_next_put_sends_again() -> None:
    ep = Endpoint()
    ep.fail = TransportError("connection refused")
    c = Coalescer(ep.send, 1 << 20)
    with pytest.raises(TransportError, match="connection refused"):
        await c.put("a", piece("a"))
    ep.fail = None
    await c.put("a", piece("a", 1))  # the caller's retry
    assert len(ep.requests) == 2
