"""StreamSender with a fake transport: yields that queue while a request is in flight leave together, in order,
in bodies under the 1 MiB limit; a slow stream goes out item by item; the queue makes the handler wait."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from handler_sdk.chunker import EncodedItem, batch_body, encode, single_body
from handler_sdk.errors import StaleResult, TransportError
from handler_sdk.models import MAX_STREAM_BYTES
from handler_sdk.worker.sender import StreamSender


class FakeTransport:
    """Records each stream request's body as the HTTP transport would build it; ``gate`` holds requests."""

    def __init__(self, *, batch_stream: bool = True, direct: bool = False, fail: int = 0) -> None:
        self.batch_stream = batch_stream
        self.direct = direct
        self.bodies: list[bytes] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = fail

    async def stream(self, job_id: str, items: Sequence[EncodedItem]) -> None:
        await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise TransportError("down")
        self.bodies.append(single_body(items[0]) if len(items) == 1 else batch_body(list(items)))

    def outputs(self) -> list[Any]:
        out: list[Any] = []
        for b in self.bodies:
            parsed = orjson.loads(b)
            out += parsed["outputs"] if "outputs" in parsed else [parsed["output"]]
        return out


def _item(value: Any) -> EncodedItem:
    encoded = encode(value)
    assert isinstance(encoded, EncodedItem)
    return encoded


async def test_items_queued_behind_a_request_leave_together_in_order_under_the_limit() -> None:
    t = FakeTransport()
    s = StreamSender(t, "job", max_buffered=64 << 20)  # type: ignore[arg-type]
    await s.emit(_item({"i": -1}))  # goes out at once and holds the line
    t.gate.clear()
    await asyncio.sleep(0)
    tokens = [{"token": "x" * 60, "i": i} for i in range(40_000)]  # ~3 MB: several bodies
    for tok in tokens:
        await s.emit(_item(tok))
    t.gate.set()
    await s.flush()
    assert t.outputs() == [{"i": -1}, *tokens]
    assert all(len(b) <= MAX_STREAM_BYTES for b in t.bodies)
    assert 3 <= len(t.bodies) <= 6, "the queue is packed into few full bodies, not one request per item"
    assert s.sent == 1 + len(tokens)


async def test_a_transport_without_batches_gets_one_item_per_request() -> None:
    t = FakeTransport(batch_stream=False)
    s = StreamSender(t, "job")  # type: ignore[arg-type]
    t.gate.clear()
    for i in range(5):
        await s.emit(_item(i))
    t.gate.set()
    await s.flush()
    assert t.bodies == [b'{"output":%d}' % i for i in range(5)]


async def test_a_direct_transport_is_called_inline_for_each_item() -> None:
    t = FakeTransport(direct=True)
    s = StreamSender(t, "job")  # type: ignore[arg-type]
    await s.emit(_item("a"))
    assert t.bodies == [b'{"output":"a"}']
    await s.flush()


async def test_a_full_queue_makes_the_handler_wait_until_it_drains() -> None:
    t = FakeTransport()
    s = StreamSender(t, "job", max_buffered=1000)  # type: ignore[arg-type]
    t.gate.clear()
    await s.emit(_item("first"))
    await asyncio.sleep(0)  # its request is now in flight, held at the gate
    waiting = asyncio.create_task(s.emit(_item("y" * 2000)))
    await asyncio.sleep(0.05)
    assert not waiting.done(), "over max_buffered: the emit waits until the queue is taken"
    t.gate.set()
    await asyncio.wait_for(waiting, 5)
    await s.flush()
    assert t.outputs() == ["first", "y" * 2000]


async def test_a_failed_delivery_is_retried_then_raised_by_flush_and_the_next_emit() -> None:
    t = FakeTransport(fail=100)
    s = StreamSender(t, "job", retries=2, backoff_s=0.001)  # type: ignore[arg-type]
    await s.emit(_item(1))
    with pytest.raises(TransportError):
        await s.flush()
    with pytest.raises(TransportError):
        await s.emit(_item(2))


async def test_a_stale_job_is_not_retried() -> None:
    class Stale(FakeTransport):
        calls = 0

        async def stream(self, job_id: str, items: Sequence[EncodedItem]) -> None:
            self.calls += 1
            raise StaleResult("gone")

    t = Stale()
    s = StreamSender(t, "job", retries=5, backoff_s=0.001)  # type: ignore[arg-type]
    await s.emit(_item(1))
    with pytest.raises(StaleResult):
        await s.flush()
    assert t.calls == 1
