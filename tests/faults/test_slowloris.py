"""Fault 6: slowloris. serve used to keep stalled bodies, unfinished headers and idle connections open for good
(all still open after 150 s), and 200 stalled chunked /run uploads held all 200 /run concurrency slots, so every
real /run got 429. Now each has a bounded timeout (--header-timeout, --body-timeout, --idle-timeout)."""

from __future__ import annotations

import asyncio
import time

import pytest

from handler_sdk.loader import load_handler

from .tools import HANDLERS, call

ECHO = str(HANDLERS) + ":echo"
TIMEOUTS = {"header_timeout_s": 0.5, "body_timeout_s": 0.5, "idle_timeout_s": 1.0}


@pytest.fixture
async def ep(endpoint_factory):
    return await endpoint_factory(load_handler(ECHO), rate_limits=True, **TIMEOUTS)


async def closed_after(reader: asyncio.StreamReader, limit: float = 5.0) -> tuple[float, bytes]:
    """Seconds until the server closed the connection, and what it sent before."""
    t0, got = time.monotonic(), b""
    async with asyncio.timeout(limit):
        while chunk := await reader.read(65536):
            got += chunk
    return time.monotonic() - t0, got


async def _open(ep):
    return await asyncio.open_connection("127.0.0.1", ep.server.port)


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(ep):
    reader, writer = await _open(ep)
    took, got = await closed_after(reader)
    assert got == b"" and took < 3
    writer.close()


async def test_unfinished_headers_are_closed_after_the_header_timeout(ep):
    reader, writer = await _open(ep)
    writer.write(b"POST /v2/local/run HTTP/1.1\r\nHost: x\r\nContent-Type: applic")
    took, _ = await closed_after(reader)
    assert took < 3
    writer.close()


async def test_a_stalled_body_gets_408_and_is_closed_after_the_body_timeout(ep):
    reader, writer = await _open(ep)
    writer.write(b'POST /v2/local/run HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"inp\r\n')
    took, got = await closed_after(reader)
    assert got.startswith(b"HTTP/1.1 408") and b"not received within 0.5 s" in got
    assert took < 3
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(ep):
    reader, writer = await _open(ep)
    writer.write(b"GET /v2/local/health HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    took, _ = await closed_after(reader)
    assert 0.5 < took < 4
    writer.close()


async def test_stalled_uploads_hold_no_run_slot_past_the_body_timeout(endpoint_factory):
    # A body timeout long enough for all 200 to be open at once, whatever the machine's load.
    ep = await endpoint_factory(load_handler(ECHO), rate_limits=True, **{**TIMEOUTS, "body_timeout_s": 3.0})
    conns = []
    for _ in range(200):  # the seed limit: 200 /run in flight
        reader, writer = await _open(ep)
        writer.write(b"POST /v2/local/run HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n")
        conns.append((reader, writer))
    await asyncio.sleep(0.5)  # every upload's headers are in: each holds a /run slot, waiting for its body
    status, _, headers = await call(ep.http, "POST", f"{ep.url}/run", {"input": {}})
    assert status == 429 and "Retry-After" in headers  # they do hold the slots while within their timeout
    results = await asyncio.gather(*(closed_after(r, 10) for r, _ in conns))
    assert all(got.startswith(b"HTTP/1.1 408") for _, got in results)
    status, job, _ = await call(ep.http, "POST", f"{ep.url}/run", {"input": {"after": True}})
    assert status == 200
    await ep.wait_status(job["id"], "COMPLETED")
    for _, w in conns:
        w.close()
