"""Fault 1 and its class: input nested deeper than can be encoded, and integers beyond 64 bits.

A 526-byte /run used to kill the journal writer (orjson reads 1,024 levels but writes 254), after which every
/run and /purge-queue hung until a restart. Now such input is refused with a 400 on every submit route, no single
record can stop the writer, and the endpoint keeps serving.
"""

from __future__ import annotations

import asyncio
import sqlite3

import aiohttp
import pytest

from handler_sdk import codec
from handler_sdk.loader import load_handler
from handler_sdk.models import JobStatus
from handler_sdk.serve.state.broker import Broker
from handler_sdk.serve.state.store import JobStore

from .tools import HANDLERS, call

DEEP_BODY = b'{"input":{"a":' + b"[" * 254 + b"]" * 254 + b"}}"  # the 526-byte body of the report
ECHO = str(HANDLERS) + ":echo"


def deep(n: int) -> object:
    v: object = []
    for _ in range(n - 1):
        v = [v]
    return v


@pytest.fixture
async def ep(endpoint_factory):
    return await endpoint_factory(load_handler(ECHO))


@pytest.mark.parametrize("route", ["run", "runsync", "openai/v1/chat/completions"])
async def test_input_nested_past_the_encoder_limit_gets_400_on_every_submit_route(ep, route):
    body = DEEP_BODY if not route.startswith("openai") else b'{"messages":' + b"[" * 254 + b"]" * 254 + b"}"
    status, reply, _ = await call(ep.http, "POST", f"{ep.url}/{route}", data=body)
    assert status == 400
    message = reply["error"]["message"] if route.startswith("openai") else reply["error"]
    assert "deeper than 250 levels" in message
    assert ep.broker.health()["jobs"]["inQueue"] == 0  # refused before the job existed


async def test_after_a_too_deep_run_the_endpoint_still_journals_runs_and_purges(ep):
    assert (await call(ep.http, "POST", f"{ep.url}/run", data=DEEP_BODY))[0] == 400
    # Each of these hung for good (30 s measured) once the writer had died.
    status, job, _ = await call(ep.http, "POST", f"{ep.url}/run", {"input": {"x": 1}}, timeout=5)
    assert status == 200
    await ep.wait_status(job["id"], "COMPLETED")
    assert (await call(ep.http, "POST", f"{ep.url}/purge-queue", timeout=5))[0] == 200
    assert ep.broker.store._task is not None and not ep.broker.store._task.done()


async def test_the_deepest_accepted_input_completes_through_the_journal(ep):
    status, job, _ = await call(ep.http, "POST", f"{ep.url}/run", {"input": {"a": deep(248)}})
    assert status == 200
    body = await ep.wait_status(job["id"], "COMPLETED")
    assert body["output"] == {"a": deep(248)}


async def test_a_progress_update_too_deep_to_encode_is_dropped_and_the_worker_goes_on(ep):
    # Built in the handler (the input itself is shallow enough): job.progress(deep) used to raise out of the
    # progress loop, whose failure ends the worker's task group.
    status, job, _ = await call(ep.http, "POST", f"{ep.url}/run", {"input": {"progress_depth": 300}})
    assert status == 200
    await ep.wait_status(job["id"], "COMPLETED")
    status, later, _ = await call(ep.http, "POST", f"{ep.url}/runsync", {"input": {"y": 2}}, timeout=10)
    assert status == 200 and later["status"] == "COMPLETED"


async def test_no_record_stops_the_writer_error_details_too_deep_for_the_encoder(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    b = Broker(store)
    await b.open()
    from handler_sdk.models import RunRequest

    r = b.submit(RunRequest(input={"a": 1}))
    await b.take("w", 1)
    # A worker's error details arrive as a JSON string, parsed without the request limit: 300 levels.
    b.done("w", r.id, JobStatus.FAILED, error="E: boom", details={"error_traceback": deep(300)})
    await asyncio.wait_for(b.durable(), 5)
    later = b.submit(RunRequest(input={"b": 2}))
    await asyncio.wait_for(b.durable(), 5)
    await store.close()
    conn = sqlite3.connect(tmp_path / "jobs.sqlite3")
    rows = dict(conn.execute("SELECT id, state FROM jobs").fetchall())
    conn.close()
    assert set(rows) == {r.id, later.id}
    assert codec.loads(rows[r.id])["status"] == "FAILED"


BIG = 2**70 + 1  # not a float in disguise: 2**70 itself is one exactly


async def test_integers_beyond_64_bits_reach_the_handler_and_the_result_exactly(ep):
    status, reply, _ = await call(ep.http, "POST", f"{ep.url}/runsync", data=b'{"input":{"n":%d,"m":-%d}}' % (BIG, BIG))
    assert status == 200 and reply["status"] == "COMPLETED"
    assert reply["output"] == {"n": BIG, "m": -BIG}  # aiohttp's json is the standard library's: exact
    assert type(reply["output"]["n"]) is int


async def test_integers_beyond_64_bits_survive_the_journal_and_a_restart(endpoint_factory, tmp_path):
    data = tmp_path / "big"
    first = await endpoint_factory(None, data_dir=data)
    body = b'{"input":{"seed":%d}}' % (BIG + 1)
    status, job, _ = await call(first.http, "POST", f"{first.url}/run", data=body)
    assert status == 200
    await first.server.close()
    second = await endpoint_factory(load_handler(ECHO), data_dir=data)
    out = await second.wait_status(job["id"], "COMPLETED")
    assert out["output"] == {"seed": BIG + 1}


async def test_hostile_requests_get_4xx_never_5xx(ep):
    cases = [
        ("POST", "run", b"{"),
        ("POST", "run", b"\xff\xfe\x00"),
        ("POST", "run", b'{"input": "x"}'),
        ("POST", "run", b"[]"),
        ("POST", "run", b'{"input":{"a":NaN}}'),
        ("POST", "runsync", b'{"input":{}, "policy": {"ttl": "soon"}}'),
        ("GET", "status/" + "x" * 5000, None),
        ("POST", "cancel/%00", None),
        ("DELETE", "run", None),
        ("PATCH", "health", None),
        ("POST", "stream/..%2F..%2Fetc", None),
    ]
    for method, op, data in cases:
        status, _, _ = await call(ep.http, method, f"{ep.url}/{op}", data=data)
        assert 400 <= status < 500, (method, op, status)
    async with aiohttp.ClientSession() as raw:
        headers = {"Content-Type": "text/plain; charset=utf-32", "X-" + "a" * 100: "b" * 4000}
        status, _, _ = await call(raw, "POST", f"{ep.url}/run", data=b'{"input":{}}', headers=headers)
        assert status == 200


async def test_a_remote_result_nested_too_deep_fails_its_job_with_the_reason(endpoint_factory):
    ep = await endpoint_factory(None)
    _, job, _ = await call(ep.http, "POST", f"{ep.url}/run", {"input": {}})
    status, taken, _ = await call(ep.http, "GET", f"{ep.url}/job-take/w1")
    assert status == 200 and taken["id"] == job["id"]
    body = b'{"output":' + b"[" * 300 + b"]" * 300 + b"}"
    status, _, _ = await call(ep.http, "POST", f"{ep.url}/job-done/w1/{job['id']}", data=body)
    assert status == 200
    st = await ep.wait_status(job["id"], "FAILED")
    assert st["errorDetails"]["error_type"] == "OutputNotSerializable" and "deeper than 250" in st["error"]


async def test_error_details_nested_too_deep_in_a_runpod_error_string_are_kept_as_text(endpoint_factory):
    ep = await endpoint_factory(None)
    _, job, _ = await call(ep.http, "POST", f"{ep.url}/run", {"input": {}, "webhook": "http://127.0.0.1:9/hook"})
    await call(ep.http, "GET", f"{ep.url}/job-take/w1")
    deep_error = '{"error_type": "E", "error_message": ' + "[" * 300 + "]" * 300 + "}"
    status, _, _ = await call(ep.http, "POST", f"{ep.url}/job-done/w1/{job['id']}", {"error": deep_error})
    assert status == 200  # was 500: the webhook body of the failed job could not be encoded
    st = await ep.wait_status(job["id"], "FAILED")
    assert st["error"].startswith('{"error_type"')
