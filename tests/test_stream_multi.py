"""The stream-multi extension: many jobs' stream items in one job-stream-batch request, each job's part judged
alone; and the worker's multiplexer that fills those requests from every streaming job at once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_worker_protocol import Raw, leased

from handler_sdk import codec
from handler_sdk.chunker import EncodedItem, batch_body, encode
from handler_sdk.errors import StaleResult, TransportError
from handler_sdk.serve.http.workers import EXTENSIONS
from handler_sdk.worker.mux import SPREAD_FROM, SPREAD_MAX, Mux, Stream


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


# --- the worker's multiplexer ---------------------------------------------------------------------------------


class Endpoint:
    """The two post callables of a Mux: records each request's body and parts, answers each part from ``codes``
    (200 by default), fails whole requests while ``fail`` counts down, holds them while ``gate`` is clear."""

    def __init__(self, max_bytes: int = 1 << 20) -> None:
        self.max_bytes = max_bytes
        self.bodies: list[bytes] = []
        self.landed: dict[str, list[Any]] = {}
        self.codes: dict[str, int] = {}
        self.fail = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.mux = Mux(self.post, self.post_one, max_bytes)

    def _land(self, job_id: str, part: dict[str, Any]) -> int:
        code = self.codes.get(job_id, 200)
        if code == 200:
            self.landed.setdefault(job_id, []).extend(part["outputs"])
        return code

    async def post(self, body: bytes) -> tuple[list[str], list[int]]:
        self.bodies.append(body)
        await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise TransportError("connection reset")
        parts = json.loads(body)["streams"]
        return [p["id"] for p in parts], [self._land(p["id"], p) for p in parts]

    async def post_one(self, job_id: str, item: EncodedItem) -> int:
        body = batch_body([item])
        self.bodies.append(body)
        await self.gate.wait()
        return self._land(job_id, json.loads(body))

    def requests(self) -> list[list[str]]:
        """The job ids of each job-stream-batch request's parts."""
        return [[p["id"] for p in json.loads(b)["streams"]] for b in self.bodies if b.startswith(b'{"streams"')]


def item(value: Any) -> EncodedItem:
    encoded = encode(value, {"tok": 1})
    assert isinstance(encoded, EncodedItem)
    return encoded


def emit_all(s: Stream, values: list[Any]) -> None:
    for v in values:
        assert s.emit(item(v)) is None, "a queued item needs no await"


async def test_every_jobs_items_queued_while_a_request_is_in_flight_leave_together_in_the_next() -> None:
    ep = Endpoint()
    a, b, c = (ep.mux.open(j) for j in "abc")
    ep.gate.clear()
    emit_all(a, [0])
    await asyncio.sleep(0)  # a's first item is in flight, held
    emit_all(a, [1, 2])
    emit_all(b, [0])
    emit_all(c, [0, 1])
    ep.gate.set()
    await asyncio.gather(a.flush(), b.flush(), c.flush())
    assert ep.requests() == [["a"], ["a", "b", "c"]]
    assert ep.landed == {"a": [0, 1, 2], "b": [0], "c": [0, 1]}
    assert (a.sent, b.sent, c.sent) == (3, 1, 2)
    assert json.loads(ep.bodies[1])["streams"][0]["metrics"] == [{"tok": 1}] * 2


async def test_requests_stay_within_the_limit_and_an_item_too_big_to_share_one_goes_on_its_jobs_route() -> None:
    ep = Endpoint(max_bytes=400)
    a, b = ep.mux.open("a"), ep.mux.open("b")
    ep.gate.clear()
    emit_all(a, [0])
    await asyncio.sleep(0)
    emit_all(a, [f"a{i}" * 10 for i in range(12)])
    big = "B" * 330  # fits a job-stream body, not a job-stream-batch one
    emit_all(b, [big, "b1"])
    ep.gate.set()
    await asyncio.gather(a.flush(), b.flush())
    assert all(len(body) <= 400 for body in ep.bodies)
    assert ep.landed == {"a": [0, *(f"a{i}" * 10 for i in range(12))], "b": [big, "b1"]}
    assert any(body.startswith(b'{"outputs"') for body in ep.bodies), "the big item went on its own route"


async def test_each_jobs_part_gets_its_own_verdict() -> None:
    ep = Endpoint()
    ep.codes = {"gone": 404, "taken": 409, "flaky": 500}
    streams = {j: ep.mux.open(j, retries=2) for j in ("ok", "gone", "taken", "flaky")}
    for s in streams.values():
        emit_all(s, [1])
    results = await asyncio.gather(*(s.flush() for s in streams.values()), return_exceptions=True)
    verdicts = dict(zip(streams, results, strict=True))
    assert verdicts["ok"] is None
    assert isinstance(verdicts["gone"], StaleResult)
    assert isinstance(verdicts["taken"], StaleResult)
    assert isinstance(verdicts["flaky"], TransportError)
    assert [r.count("flaky") for r in ep.requests()] == [1, 1, 1], "a 500 is retried, twice, then fails the job"
    with pytest.raises(StaleResult):
        streams["gone"].emit(item(2))
    assert ep.landed == {"ok": [1]}


async def test_a_failed_request_is_sent_again_in_order_ahead_of_what_queued_meanwhile() -> None:
    ep = Endpoint()
    ep.mux.backoff_s = 0.001
    s = ep.mux.open("a", backoff_s=0.001)
    ep.fail = 2
    emit_all(s, [0, 1])
    await asyncio.sleep(0)
    emit_all(s, [2])
    await s.flush()
    assert ep.landed == {"a": [0, 1, 2]}
    assert len(ep.bodies) == 3


async def test_a_request_that_keeps_failing_fails_its_jobs_after_their_retries() -> None:
    ep = Endpoint()
    s = ep.mux.open("a", retries=2, backoff_s=0.001)
    ep.fail = 100
    emit_all(s, [0])
    with pytest.raises(TransportError, match="connection reset"):
        await s.flush()
    assert len(ep.bodies) == 3
    with pytest.raises(TransportError):
        s.emit(item(1))


async def test_a_full_queue_makes_the_handler_wait_until_the_sender_takes_it() -> None:
    ep = Endpoint()
    s = ep.mux.open("a", max_buffered=100)
    ep.gate.clear()
    emit_all(s, ["first"])
    await asyncio.sleep(0)  # in flight, held
    wait = s.emit(item("y" * 200))
    assert wait is not None, "over max_buffered: the emit hands back something to wait on"
    waiting = asyncio.ensure_future(wait)
    await asyncio.sleep(0.02)
    assert not waiting.done()
    ep.gate.set()
    await asyncio.wait_for(waiting, 5)
    await s.flush()
    assert ep.landed == {"a": ["first", "y" * 200]}


async def test_an_aborted_job_sends_nothing_more() -> None:
    ep = Endpoint()
    a, b = ep.mux.open("a"), ep.mux.open("b")
    ep.gate.clear()
    emit_all(a, [0])
    await asyncio.sleep(0)
    emit_all(a, [1])
    emit_all(b, [0])
    a.abort()
    ep.gate.set()
    await b.flush()
    await asyncio.sleep(0)
    assert ep.landed == {"a": [0], "b": [0]}


_values = st.one_of(st.integers(0, 10**6), st.text(max_size=40), st.text(min_size=600, max_size=1900))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    jobs=st.integers(1, 6),
    ops=st.lists(st.tuples(st.integers(0, 5), _values, st.booleans()), max_size=60),
    fail=st.integers(0, 2),
)
def test_any_interleaving_of_jobs_arrives_complete_and_in_order_per_job_each_request_under_the_limit(
    jobs: int, ops: list[tuple[int, Any, bool]], fail: int
) -> None:
    limit = 2048

    async def scenario() -> tuple[Endpoint, dict[str, list[Any]]]:
        ep = Endpoint(max_bytes=limit)
        ep.fail = fail
        streams = [ep.mux.open(f"job-{j}", backoff_s=0.0) for j in range(jobs)]
        sent: dict[str, list[Any]] = {}
        for j, value, yield_now in ops:
            s = streams[j % jobs]
            # The chunker's guarantee: any item fits one job-stream body.
            encoded = encode(value, {"i": len(sent.get(s.job_id, []))}, limit=limit - 64 - 20)
            for piece in encoded if isinstance(encoded, list) else [encoded]:
                if (wait := s.emit(piece)) is not None:
                    await wait
                sent.setdefault(s.job_id, []).append(codec.loads(piece.output))
            if yield_now:
                await asyncio.sleep(0)
        await asyncio.gather(*(s.flush() for s in streams))
        return ep, sent

    ep, sent = asyncio.run(scenario())
    assert ep.landed == sent
    assert all(len(body) <= limit for body in ep.bodies)


_item_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8)), max_size=4),
)
_item_metrics = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["tok", "kv", "stream_index", "attempt"]), st.integers(0, 99), max_size=3),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    yields=st.lists(
        st.tuples(st.integers(0, 2), st.booleans(), st.one_of(st.text(max_size=30), _item_values), _item_metrics),
        max_size=40,
    )
)
def test_the_runners_items_reach_the_body_as_encoded_items_would_same_bytes_same_order(
    yields: list[tuple[int, bool, Any, dict[str, Any] | None]],
) -> None:
    """The runner hands a stream's emit each token's two parts (no EncodedItem between): the bodies are the bytes
    the EncodedItem path makes, and decode to every yield, in order, per job."""
    from handler_sdk import Chunk, handler
    from handler_sdk.job import Job
    from handler_sdk.runner import _put_parts, run_job
    from handler_sdk.threads import ElasticPool

    async def scenario(via_items: bool) -> Endpoint:
        ep = Endpoint()
        pool = ElasticPool()

        async def one(j: int) -> None:
            @handler
            async def gen(job: Any) -> Any:
                for who, as_str, value, metrics in yields:
                    if who == j:
                        yield str(value) if as_str else Chunk(value, metrics=metrics)
                    await asyncio.sleep(0)

            s = ep.mux.open(f"job-{j}")

            def as_items(item: EncodedItem) -> Any:  # not a stream's own emit: the runner makes EncodedItems
                return s.emit(item)

            emit = as_items if via_items else s.emit
            assert (_put_parts(emit) == s.emit_parts) is not via_items
            job = Job({"id": f"job-{j}", "input": {}}, input={})
            await run_job(gen, job, emit=emit, pool=pool)
            await s.flush()

        await asyncio.gather(*(one(j) for j in range(3)))
        return ep

    parts, items = asyncio.run(scenario(False)), asyncio.run(scenario(True))
    assert parts.bodies == items.bodies
    got: dict[str, list[tuple[Any, Any]]] = {}
    for body in parts.bodies:
        for p in codec.loads(body)["streams"]:
            mets = p.get("metrics", [None] * len(p["outputs"]))
            got.setdefault(p["id"], []).extend(zip(p["outputs"], mets, strict=True))
    want: dict[str, list[tuple[Any, Any]]] = {}
    for who, as_str, value, metrics in yields:
        kept = {k: v for k, v in (metrics or {}).items() if k not in ("stream_index", "attempt")}
        out = codec.loads(codec.dumps(str(value) if as_str else value))
        want.setdefault(f"job-{who}", []).append((out, None if as_str or not metrics else kept))
    assert got == want


@given(st.integers(min_value=0, max_value=5000), st.integers(min_value=0, max_value=5000))
def test_the_wait_between_requests_grows_with_the_streams_queued_past_spread_from_up_to_spread_max(
    a: int, b: int
) -> None:
    mux = Mux(Endpoint().post, Endpoint().post_one, 1 << 20, interval_s=0.02)
    few, many = sorted((a, b))
    assert 0.02 <= mux._wait(few) <= mux._wait(many) <= 0.02 * SPREAD_MAX
    if many <= SPREAD_FROM:
        assert mux._wait(many) == 0.02
    if many >= SPREAD_FROM * SPREAD_MAX:
        assert mux._wait(many) == pytest.approx(0.02 * SPREAD_MAX)


async def test_at_many_streams_requests_come_further_apart_and_each_part_carries_more_items() -> None:
    ep = Endpoint()
    ep.mux = Mux(ep.post, ep.post_one, 1 << 20, interval_s=0.02)
    streams = [ep.mux.open(f"j{i}") for i in range(200)]
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    post = ep.post

    async def timed(body: bytes) -> tuple[list[str], list[int]]:
        starts.append(loop.time())
        return await post(body)

    ep.mux._post = timed
    for _ in range(3):  # three engine steps, one item per stream each
        for s in streams:
            emit_all(s, [0])
        await asyncio.sleep(0.01)
    await asyncio.gather(*(s.flush() for s in streams))
    assert len(starts) >= 2
    # 200 streams queued: the wait is 2.5 intervals (less a little for the loop's clock resolution).
    assert starts[1] - starts[0] >= 0.02 * SPREAD_MAX - 0.002
    assert all(s.sent == 3 for s in streams)
