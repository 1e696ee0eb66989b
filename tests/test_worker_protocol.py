"""The endpoint's side of the worker protocol (DESIGN section 3), driven by raw HTTP requests on loopback.

Every test plays the worker by hand against a pure-queue endpoint, so each route's replies, status codes and
lease rules are checked exactly as a runpod worker (or ours) would meet them.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from typing import Any

import pytest

from handler_sdk import trace
from handler_sdk.models import MAX_STREAM_BYTES
from handler_sdk.serve.http.workers import EXTENSIONS
from handler_sdk.serve.state.broker import BrokerConfig

# The same tests on both job stores: the embedded default and a real redis-server.
pytestmark = pytest.mark.stores("sqlite", "redis")

FORM = "application/x-www-form-urlencoded"


class Raw:
    """A worker speaking the protocol by hand: raw requests, raw replies."""

    def __init__(self, ep: Any, worker_id: str = "w1", auth: str | None = None) -> None:
        self.ep = ep
        self.wid = worker_id
        self.auth = auth

    async def call(
        self,
        method: str,
        op: str,
        *,
        body: bytes | None = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
        auth: str | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        headers = {"Content-Type": content_type} if body is not None else {}
        key = auth if auth is not None else self.auth
        if key is not None:
            headers["Authorization"] = key
        url = f"{self.ep.url}/{op}"
        # aiohttp warns about big raw byte bodies; a file-like body is sent the same way.
        data: Any = io.BytesIO(body) if body is not None and len(body) > 1 << 18 else body
        async with self.ep.http.request(method, url, data=data, headers=headers, params=params) as r:
            data = await r.read()
            return r.status, dict(r.headers), json.loads(data) if data.strip() else None

    async def take(self, **params: str) -> tuple[int, dict[str, str], Any]:
        return await self.call("GET", f"job-take/{self.wid}", params=params or None)

    async def take_batch(self, n: int | str, **params: str) -> tuple[int, dict[str, str], Any]:
        return await self.call("GET", f"job-take-batch/{self.wid}", params={"batch_size": str(n), **params})

    async def stops(self, **params: str) -> tuple[int, dict[str, str], Any]:
        return await self.call("GET", f"job-stop/{self.wid}", params=params or None)

    async def done(
        self, job_id: str, body: Any = None, *, raw: bytes | None = None, content_type: str = FORM, **params: str
    ) -> tuple[int, Any]:
        data = raw if raw is not None else json.dumps(body).encode()
        params = {"isStream": "false", **params}
        code, _, reply = await self.call(
            "POST", f"job-done/{self.wid}/{job_id}", body=data, content_type=content_type, params=params
        )
        return code, reply

    async def stream(self, job_id: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else json.dumps(body).encode()
        code, _, reply = await self.call(
            "POST", f"job-stream/{self.wid}/{job_id}", body=data, content_type=FORM, params={"isStream": "false"}
        )
        return code, reply

    async def ping(self, job_ids: list[str] | None = None, **params: str) -> int:
        q = {"runpod_version": "1.12.0", **params}
        if job_ids:
            q["job_id"] = ",".join(job_ids)
        code, _, _ = await self.call("GET", f"ping/{self.wid}", params=q)
        return code


async def queue(ep: Any, n: int = 1, **extra: Any) -> list[str]:
    ids = []
    for i in range(n):
        code, body = await ep.post("run", {"input": {"i": i}, **extra})
        assert code == 200, body
        ids.append(body["id"])
    return ids


async def leased(ep: Any, worker: Raw, n: int = 1) -> list[str]:
    """Queue n jobs and take them all as ``worker``."""
    ids = await queue(ep, n)
    code, _, jobs = await worker.take_batch(n)
    assert code == 200
    assert [j["id"] for j in jobs] == ids
    return ids


async def health(ep: Any) -> dict[str, Any]:
    code, body = await ep.get("health")
    assert code == 200
    return body


async def until(check: Any, what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def pure(endpoint_factory: Any) -> Any:
    """A pure-queue endpoint (no handler) with a short hold."""
    return await endpoint_factory(None, take_hold_s=0.3)


# --- job-take and job-take-batch ---------------------------------------------------------------------------


async def test_empty_take_is_held_open_then_answered_204(pure: Any) -> None:
    t0 = time.monotonic()
    code, headers, body = await Raw(pure).take(job_in_progress="0")
    assert code == 204
    assert body is None
    assert time.monotonic() - t0 >= 0.25  # held for take_hold_s (0.3 s), not answered at once
    assert headers["X-Handler-SDK"] == EXTENSIONS


async def test_held_take_answers_as_soon_as_a_job_is_queued(endpoint_factory: Any) -> None:
    ep = await endpoint_factory(None, take_hold_s=10)
    taking = asyncio.create_task(Raw(ep).take(job_in_progress="0"))
    await asyncio.sleep(0.1)
    [job_id] = await queue(ep)
    code, headers, job = await asyncio.wait_for(taking, 5)
    assert code == 200
    assert headers["Content-Type"].startswith("application/json")
    assert job == {"id": job_id, "input": {"i": 0}, "traceparent": trace.derived(job_id)}


@pytest.mark.parametrize("op", ["job-take/gone", "job-take-batch/gone?batch_size=5"])
async def test_a_held_take_whose_worker_has_gone_leases_nothing_and_a_live_worker_gets_the_job(
    endpoint_factory: Any, op: str
) -> None:
    """A worker killed while its take is held (its connection closes) must not be leased the next job: the job
    would sit IN_PROGRESS on a dead worker until its lease lapsed, and come back counted as a retry."""
    ep = await endpoint_factory(None, take_hold_s=10)
    host, port = ep.url.split("//")[1].split("/")[0].split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /v2/local/{op} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(0.2)  # the take is held now
    writer.transport.abort()  # the worker process dies: its socket closes
    await asyncio.sleep(0.2)
    [job_id] = await queue(ep)
    await asyncio.sleep(0.1)
    _, st = await ep.get(f"status/{job_id}")
    assert st["status"] == "IN_QUEUE", st
    code, _, job = await asyncio.wait_for(Raw(ep, "alive").take(), 5)
    assert (code, job["id"]) == (200, job_id)
    _, st = await ep.get(f"status/{job_id}")
    assert st.get("retries", 0) == 0 and st["workerId"] == "alive"


async def test_take_carries_the_execution_timeout_policy(pure: Any) -> None:
    [job_id] = await queue(pure, policy={"executionTimeout": 5000})
    code, _, job = await Raw(pure).take()
    assert code == 200
    assert job == {"id": job_id, "input": {"i": 0}, "policy": {"executionTimeout": 5000},
                   "traceparent": trace.derived(job_id)}  # fmt: skip


async def test_take_batch_leases_up_to_batch_size_in_queue_order(pure: Any) -> None:
    ids = await queue(pure, 5)
    w = Raw(pure)
    code, _, first = await w.take_batch(3, job_in_progress="0")
    assert code == 200
    assert [j["id"] for j in first] == ids[:3]
    code, _, rest = await w.take_batch(3, job_in_progress="1")
    assert [j["id"] for j in rest] == ids[3:]
    code, _, _ = await w.take_batch(3)
    assert code == 204
    for job_id in ids:
        code, body = await pure.get(f"status/{job_id}")
        assert body["status"] == "IN_PROGRESS"
        assert body["workerId"] == "w1"


async def test_take_batch_rejects_a_non_integer_batch_size(pure: Any) -> None:
    code, _, body = await Raw(pure).take_batch("lots")
    assert code == 400
    assert "batch_size" in body["error"]


async def test_unknown_query_parameters_are_ignored_on_every_worker_route(pure: Any) -> None:
    w = Raw(pure)
    [job_id] = await queue(pure)
    code, _, job = await w.take(gpu="SIM", job_in_progress="0")
    assert (code, job["id"]) == (200, job_id)
    assert await w.ping([job_id], gpu="SIM") == 200
    code, _, _ = await w.stops(gpu="SIM")
    assert code == 200
    code, _, _ = await w.call(
        "POST", f"job-stream/w1/{job_id}", body=b'{"output": 1}', params={"gpu": "SIM", "isStream": "false"}
    )
    assert code == 200
    code, _ = await w.done(job_id, {"output": 2}, gpu="SIM")
    assert code == 200
    assert (await pure.get(f"status/{job_id}"))[1]["output"] == 2


# --- job-stop ----------------------------------------------------------------------------------------------


async def test_job_stop_is_held_then_answers_an_empty_list(pure: Any) -> None:
    t0 = time.monotonic()
    code, headers, body = await Raw(pure).stops()
    assert (code, body) == (200, {"jobsToStop": []})
    assert headers["Content-Type"].startswith("application/json")
    assert time.monotonic() - t0 >= 0.25


async def test_cancel_of_a_leased_job_releases_the_held_job_stop_once(endpoint_factory: Any) -> None:
    ep = await endpoint_factory(None, take_hold_s=1.5)
    w = Raw(ep)
    [job_id] = await leased(ep, w)
    stopping = asyncio.create_task(w.stops())
    await asyncio.sleep(0.1)
    code, body = await ep.post(f"cancel/{job_id}")
    assert (code, body["status"]) == (200, "CANCELLED")
    code, _, body = await asyncio.wait_for(stopping, 5)
    assert (code, body) == (200, {"jobsToStop": [job_id]})
    # Delivered once: the next poll is empty again.
    code, _, body = await w.stops()
    assert (code, body) == (200, {"jobsToStop": []})


async def test_a_job_past_its_execution_timeout_is_stopped_on_its_worker(endpoint_factory: Any) -> None:
    ep = await endpoint_factory(None, take_hold_s=0.3, broker=BrokerConfig(execution_grace_ms=0, tick_s=0.02))
    w = Raw(ep)
    [job_id] = await queue(ep, policy={"executionTimeout": 100})
    assert (await w.take())[0] == 200
    for _ in range(30):  # a hold may end before the deadline passes on a slow machine: poll again
        _, _, body = await w.stops()
        if body != {"jobsToStop": []}:
            break
    assert body == {"jobsToStop": [job_id]}
    status = (await ep.get(f"status/{job_id}"))[1]
    assert status["status"] == "TIMED_OUT"
    assert "executionTimeout" in status["error"]


async def test_cancel_of_a_queued_job_asks_no_worker_to_stop_it(pure: Any) -> None:
    [job_id] = await queue(pure)
    assert (await pure.post(f"cancel/{job_id}"))[1]["status"] == "CANCELLED"
    w = Raw(pure)
    assert (await w.take())[0] == 204
    assert (await w.stops())[2] == {"jobsToStop": []}


# --- job-done ----------------------------------------------------------------------------------------------


async def status_of(ep: Any, job_id: str) -> dict[str, Any]:
    code, body = await ep.get(f"status/{job_id}")
    assert code == 200, body
    return body


async def test_job_done_with_output_completes_the_job(pure: Any) -> None:
    w = Raw(pure)
    [job_id] = await leased(pure, w)
    code, reply = await w.done(job_id, {"output": {"answer": 42}})
    assert (code, reply) == (200, {"ok": True})
    body = await status_of(pure, job_id)
    assert body["status"] == "COMPLETED"
    assert body["output"] == {"answer": 42}
    assert "error" not in body


async def test_job_done_with_an_empty_object_completes_without_output(pure: Any) -> None:
    w = Raw(pure)
    a, b = await leased(pure, w, 2)
    assert (await w.done(a, {}))[0] == 200
    assert (await w.done(b, raw=b""))[0] == 200  # no body at all reads as {}
    for job_id in (a, b):
        body = await status_of(pure, job_id)
        assert body["status"] == "COMPLETED"
        assert "output" not in body


async def test_job_done_with_a_plain_error_fails_the_job(pure: Any) -> None:
    w = Raw(pure)
    [job_id] = await leased(pure, w)
    assert (await w.done(job_id, {"error": "out of memory"}))[0] == 200
    body = await status_of(pure, job_id)
    assert body["status"] == "FAILED"
    assert body["error"] == "out of memory"
    assert body["errorDetails"]["error_message"] == "out of memory"


async def test_job_done_with_output_and_error_fails_and_keeps_the_output(pure: Any) -> None:
    w = Raw(pure)
    [job_id] = await leased(pure, w)
    assert (await w.done(job_id, {"output": {"partial": 1}, "error": "asked to fail"}))[0] == 200
    body = await status_of(pure, job_id)
    assert body["status"] == "FAILED"
    assert body["error"] == "asked to fail"
    assert body["output"] == {"partial": 1}


async def test_runpod_json_in_a_string_error_is_normalised(pure: Any) -> None:
    w = Raw(pure)
    [job_id] = await leased(pure, w)
    inner = {
        "error_type": "<class 'ValueError'>",
        "error_message": "boom",
        "error_traceback": "Traceback (most recent call last):\n  ...\nValueError: boom\n",
        "hostname": "pod-host",
        "worker_id": "w1",
        "runpod_version": "1.12.0",
    }
    assert (await w.done(job_id, {"error": json.dumps(inner)}))[0] == 200
    body = await status_of(pure, job_id)
    assert body["status"] == "FAILED"
    assert body["error"] == "ValueError: boom"
    details = body["errorDetails"]
    assert details["error_type"] == "ValueError"
    assert details["error_message"] == "boom"
    assert details["error_traceback"].startswith("Traceback")
    assert (details["worker_id"], details["hostname"]) == ("w1", "pod-host")


async def test_runpod_generator_error_string_is_split_into_message_and_traceback(pure: Any) -> None:
    w = Raw(pure)
    [job_id] = await leased(pure, w)
    err = "handler: genboom \ntraceback: Traceback (most recent call last):\n  File x\nRuntimeError: genboom\n"
    assert (await w.done(job_id, {"error": err}, isStream="true"))[0] == 200
    body = await status_of(pure, job_id)
    assert body["status"] == "FAILED"
    assert body["errorDetails"]["error_message"] == "genboom"
    assert body["errorDetails"]["error_traceback"].startswith("Traceback")


async def test_job_done_body_is_json_whatever_the_content_type_and_stop_pod_is_accepted(pure: Any) -> None:
    w = Raw(pure)
    a, b = await leased(pure, w, 2)
    # Exactly what runpod's worker sends: JSON text labelled as a form, with stopPod from refresh_worker.
    code, _ = await w.done(a, raw=b'{"output": {"ok": true}, "stopPod": true}', content_type=FORM)
    assert code == 200
    code, _ = await w.done(b, raw='{"output": "ünïcode"}'.encode(), content_type="text/plain; charset=utf-8")
    assert code == 200
    assert (await status_of(pure, a))["output"] == {"ok": True}
    assert (await status_of(pure, b))["output"] == "ünïcode"


async def test_final_generator_post_with_an_empty_list_keeps_no_output(pure: Any) -> None:
    w = Raw(pure)
    a, b = await leased(pure, w, 2)
    for job_id in (a, b):
        assert (await w.stream(job_id, {"output": "x"}))[0] == 200
    # Non-aggregating runpod generators end with {"output": []}: the streamed items are the result.
    assert (await w.done(a, {"output": []}, isStream="true"))[0] == 200
    # An aggregating one posts the items again as the output.
    assert (await w.done(b, {"output": ["x"]}, isStream="true"))[0] == 200
    assert "output" not in await status_of(pure, a)
    assert (await status_of(pure, b))["output"] == ["x"]
    _, body = await pure.get(f"stream/{a}")
    assert [c["output"] for c in body["stream"]] == ["x"]


async def test_job_done_status_field_sets_timed_out_and_cancelled_outcomes(pure: Any) -> None:
    w = Raw(pure)
    a, b, c = await leased(pure, w, 3)
    assert (await w.done(a, {"status": "TIMED_OUT", "error": "too slow"}))[0] == 200
    assert (await w.done(b, {"status": "CANCELLED"}))[0] == 200
    assert (await w.done(c, {"status": "COMPLETED", "error": "but it broke"}))[0] == 200
    assert (await status_of(pure, a))["status"] == "TIMED_OUT"
    assert (await status_of(pure, b))["status"] == "CANCELLED"
    assert (await status_of(pure, c))["status"] == "FAILED"  # an error always fails, whatever status says


async def test_job_done_in_progress_is_a_progress_update_not_a_result(pure: Any) -> None:
    w = Raw(pure)
    [job_id] = await leased(pure, w)
    code, reply = await w.done(job_id, {"status": "IN_PROGRESS", "output": {"step": 3}})
    assert (code, reply) == (200, {"ok": True})
    body = await status_of(pure, job_id)
    assert (body["status"], body["output"]) == ("IN_PROGRESS", {"step": 3})
    assert (await w.done(job_id, {"output": "final"}))[0] == 200
    # runpod posts progress from a thread, so one can land after the result: it must not overwrite it.
    code, _ = await w.done(job_id, {"status": "IN_PROGRESS", "output": {"step": 4}})
    assert code == 409
    body = await status_of(pure, job_id)
    assert (body["status"], body["output"]) == ("COMPLETED", "final")


async def test_job_done_rejects_bodies_that_are_not_json_objects(pure: Any) -> None:
    w = Raw(pure)
    [job_id] = await leased(pure, w)
    code, reply = await w.done(job_id, raw=b"[1, 2]")
    assert code == 400
    assert "JSON object" in reply["error"]
    code, reply = await w.done(job_id, raw=b"{not json")
    assert code == 400
    assert "malformed JSON" in reply["error"]
    code, reply = await w.done(job_id, {"status": "BOGUS"})
    assert code == 400
    assert (await status_of(pure, job_id))["status"] == "IN_PROGRESS"  # none of them touched the job


async def test_job_done_over_the_result_cap_is_refused_with_413(endpoint_factory: Any) -> None:
    ep = await endpoint_factory(None, take_hold_s=0.3, result_cap=1000)
    w = Raw(ep)
    [job_id] = await leased(ep, w)
    code, reply = await w.done(job_id, {"output": "x" * (MAX_STREAM_BYTES + 2000)})
    assert code == 413
    assert "limit" in reply["error"]
    assert (await status_of(ep, job_id))["status"] == "IN_PROGRESS"


# --- job-stream --------------------------------------------------------------------------------------------


async def test_job_stream_single_items_arrive_in_order(pure: Any) -> None:
    w = Raw(pure)
    [job_id] = await leased(pure, w)
    for i in range(3):
        code, reply = await w.stream(job_id, {"output": {"i": i}})
        assert (code, reply) == (200, {"ok": True, "items": i + 1})
    code, body = await pure.get(f"stream/{job_id}")
    assert [c["output"] for c in body["stream"]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert [c["metrics"]["stream_index"] for c in body["stream"]] == [0, 1, 2]


async def test_job_stream_batch_extension_keeps_each_item_and_its_metrics(pure: Any) -> None:
    w = Raw(pure)
    [job_id] = await leased(pure, w)
    assert (await w.stream(job_id, {"output": "first"}))[0] == 200
    code, reply = await w.stream(job_id, {"outputs": ["a", "b", {"c": 3}], "metrics": [{"tok": 1}, None, {"tok": 2}]})
    assert (code, reply) == (200, {"ok": True, "items": 4})
    code, reply = await w.stream(job_id, {"outputs": ["d", "e"]})
    assert (code, reply) == (200, {"ok": True, "items": 6})
    code, body = await pure.get(f"stream/{job_id}")
    chunks = body["stream"]
    assert [c["output"] for c in chunks] == ["first", "a", "b", {"c": 3}, "d", "e"]
    assert [c["metrics"]["stream_index"] for c in chunks] == list(range(6))
    assert chunks[1]["metrics"]["tok"] == 1
    assert chunks[3]["metrics"]["tok"] == 2
    assert "tok" not in chunks[2]["metrics"]


@pytest.mark.stores("sqlite")  # reads the in-memory broker
async def test_a_remote_workers_own_values_for_the_endpoints_metrics_are_dropped_not_duplicated(pure: Any) -> None:
    w = Raw(pure)
    [job_id] = await leased(pure, w)
    theirs = {"tok": 1, "stream_index": 99, "scenario": "mine", "attempt": 7}
    assert (await w.stream(job_id, {"outputs": ["a", "b"], "metrics": [theirs, {"attempt": 3}]}))[0] == 200
    for raw in pure.broker.jobs[job_id].stream:
        for key in (b'"stream_index"', b'"scenario"', b'"attempt"'):
            assert raw.count(key) == 1, raw  # one key each: JSON readers disagree on duplicates
    _, body = await pure.get(f"stream/{job_id}")
    assert [c["metrics"] for c in body["stream"]] == [
        {"tok": 1, "stream_index": 0, "scenario": "stream", "attempt": 1},
        {"stream_index": 1, "scenario": "stream", "attempt": 1},
    ]


async def test_job_stream_rejects_malformed_bodies(pure: Any) -> None:
    w = Raw(pure)
    [job_id] = await leased(pure, w)
    code, reply = await w.stream(job_id, {"outputs": ["a", "b"], "metrics": [{}]})
    assert code == 400
    assert "metrics" in reply["error"]
    code, reply = await w.stream(job_id, {"nothing": 1})
    assert code == 400
    assert "output" in reply["error"]
    code, reply = await w.stream(job_id, raw=b"")
    assert code == 400
    code, reply = await w.stream(job_id, raw=b'"a string"')
    assert code == 400
    code, reply = await w.stream(job_id, {"output": "x" * MAX_STREAM_BYTES})
    assert code == 413
    code, body = await pure.get(f"stream/{job_id}")
    assert body["stream"] == []


# --- ping, health, auth ------------------------------------------------------------------------------------


async def test_ping_registers_the_worker_and_health_counts_idle_and_running(pure: Any) -> None:
    assert (await health(pure))["workers"] == {"idle": 0, "running": 0, "initializing": 0}
    busy, idle, starting = Raw(pure, "busy"), Raw(pure, "idle"), Raw(pure, "starting")
    [job_id] = await leased(pure, busy)
    assert await busy.ping([job_id]) == 200
    assert await idle.ping() == 200
    assert await starting.ping(initializing="1") == 200
    assert (await health(pure))["workers"] == {"idle": 1, "running": 1, "initializing": 1}
    assert (await busy.done(job_id, {"output": 1}))[0] == 200
    assert (await health(pure))["workers"] == {"idle": 2, "running": 0, "initializing": 1}


async def test_a_ping_naming_jobs_the_worker_no_longer_holds_puts_them_on_its_job_stop(pure: Any) -> None:
    w, other = Raw(pure, "w1"), Raw(pure, "other")
    mine, cancelled, finished = await leased(pure, w, 3)
    [elsewhere] = await leased(pure, other)
    assert (await pure.post(f"cancel/{cancelled}"))[0] == 200
    assert (await w.stops())[2] == {"jobsToStop": [cancelled]}  # the cancel itself, delivered once
    assert (await w.done(finished, {"output": 1}))[0] == 200
    assert await w.ping([mine, cancelled, finished, elsewhere]) == 200
    code, _, body = await w.stops()
    assert code == 200
    assert sorted(body["jobsToStop"]) == sorted([cancelled, elsewhere])
    assert (await other.stops())[2] == {"jobsToStop": []}


async def test_a_worker_that_stops_pinging_drops_out_of_health(endpoint_factory: Any) -> None:
    ep = await endpoint_factory(None, take_hold_s=0.3, broker=BrokerConfig(lease_ms=300, tick_s=0.02))
    w = Raw(ep)
    assert await w.ping() == 200
    assert (await health(ep))["workers"]["idle"] == 1

    async def gone() -> bool:
        return (await health(ep))["workers"]["idle"] == 0

    await until(gone, "the silent worker left /health")


@pytest.fixture
async def keyed(endpoint_factory: Any) -> Any:
    return await endpoint_factory(None, take_hold_s=0.2, api_key="sekret")


@pytest.mark.parametrize("auth", ["sekret", "Bearer sekret"])
async def test_worker_routes_accept_the_bare_key_and_the_bearer_form(keyed: Any, auth: str) -> None:
    w = Raw(keyed, auth=auth)
    assert await w.ping() == 200
    [job_id] = await queue(keyed)
    code, _, job = await w.take()
    assert (code, job["id"]) == (200, job_id)
    assert (await w.done(job_id, {"output": auth}))[0] == 200
    assert (await status_of(keyed, job_id))["output"] == auth


@pytest.mark.parametrize("auth", [None, "wrong", "Bearer wrong", "Basic sekret"])
async def test_worker_routes_refuse_a_missing_or_wrong_key_with_401(keyed: Any, auth: str | None) -> None:
    w = Raw(keyed, auth=auth or "")
    for method, op in [("GET", "job-take/w1"), ("GET", "ping/w1"), ("POST", "job-done/w1/j1")]:
        code, _, body = await w.call(method, op, body=b"{}" if method == "POST" else None, auth=auth or "")
        assert code == 401, op
        assert "API key" in body["error"]


async def test_client_routes_take_only_the_bearer_form(keyed: Any) -> None:
    w = Raw(keyed)
    assert (await w.call("GET", "health", auth="sekret"))[0] == 401
    assert (await w.call("GET", "health", auth="Bearer sekret"))[0] == 200


async def test_auth_is_checked_before_the_endpoint_id(keyed: Any) -> None:
    base = keyed.url.rsplit("/", 1)[0]
    for auth, expected in [("wrong", 401), ("sekret", 404)]:
        async with keyed.http.get(f"{base}/other/job-take/w1", headers={"Authorization": auth}) as r:
            assert r.status == expected
            assert "error" in await r.json()


# --- stale results: 409 ------------------------------------------------------------------------------------


async def test_a_second_result_for_an_ended_job_is_refused_and_ignored(pure: Any) -> None:
    w = Raw(pure)
    [job_id] = await leased(pure, w)
    assert (await w.done(job_id, {"output": "first"}))[0] == 200
    code, reply = await w.done(job_id, {"output": "second"})
    assert code == 409
    assert "ignored" in reply["error"]
    assert (await w.stream(job_id, {"output": "late"}))[0] == 409
    body = await status_of(pure, job_id)
    assert (body["status"], body["output"]) == ("COMPLETED", "first")


async def test_a_result_for_a_cancelled_job_is_refused_and_ignored(pure: Any) -> None:
    w = Raw(pure)
    [job_id] = await leased(pure, w)
    assert (await pure.post(f"cancel/{job_id}"))[0] == 200
    assert (await w.stream(job_id, {"output": "late"}))[0] == 409
    assert (await w.done(job_id, {"output": "late"}))[0] == 409
    body = await status_of(pure, job_id)
    assert body["status"] == "CANCELLED"
    assert "output" not in body


async def test_a_result_from_a_worker_that_does_not_hold_the_lease_is_refused(pure: Any) -> None:
    owner, other = Raw(pure, "owner"), Raw(pure, "other")
    [job_id] = await leased(pure, owner)
    assert (await other.done(job_id, {"output": "not mine"}))[0] == 409
    assert (await other.stream(job_id, {"output": "not mine"}))[0] == 409
    assert (await owner.done(job_id, {"output": "mine"}))[0] == 200
    assert (await status_of(pure, job_id))["output"] == "mine"


async def test_a_result_for_an_unknown_job_is_404(pure: Any) -> None:
    code, reply = await Raw(pure).done("no-such-job", {"output": 1})
    assert code == 404
    assert "not found" in reply["error"]


# --- leases ------------------------------------------------------------------------------------------------


async def test_a_lapsed_lease_requeues_the_job_counts_it_retried_and_refuses_the_old_result(
    endpoint_factory: Any,
) -> None:
    ep = await endpoint_factory(None, take_hold_s=0.3, broker=BrokerConfig(lease_ms=300, tick_s=0.02))
    old, new = Raw(ep, "old"), Raw(ep, "new")
    [job_id] = await leased(ep, old)
    assert (await health(ep))["jobs"]["retried"] == 0

    async def requeued() -> bool:
        return (await status_of(ep, job_id))["status"] == "IN_QUEUE"

    await until(requeued, "the job went back to the queue")
    h = await health(ep)
    assert h["jobs"]["retried"] == 1
    assert h["jobs"]["inQueue"] == 1
    code, _, job = await new.take()
    assert (code, job["id"]) == (200, job_id)
    assert (await old.done(job_id, {"output": "stale"}))[0] == 409
    assert (await new.done(job_id, {"output": "fresh"}))[0] == 200
    body = await status_of(ep, job_id)
    assert (body["status"], body["output"], body["workerId"], body["retries"]) == ("COMPLETED", "fresh", "new", 1)


async def test_pings_keep_a_lease_alive(endpoint_factory: Any) -> None:
    ep = await endpoint_factory(None, take_hold_s=0.3, broker=BrokerConfig(lease_ms=300, tick_s=0.02))
    w = Raw(ep)
    [job_id] = await leased(ep, w)
    for _ in range(12):  # 1.2 s: four leases long
        assert await w.ping([job_id]) == 200
        await asyncio.sleep(0.1)
    assert (await status_of(ep, job_id))["status"] == "IN_PROGRESS"
    assert (await health(ep))["jobs"]["retried"] == 0
    assert (await w.done(job_id, {"output": "kept"}))[0] == 200


async def test_a_job_lost_max_attempts_times_fails_with_a_clear_error(endpoint_factory: Any) -> None:
    cfg = BrokerConfig(lease_ms=300, tick_s=0.02, max_attempts=2)
    ep = await endpoint_factory(None, take_hold_s=0.3, broker=cfg)
    [job_id] = await queue(ep)
    for n, wid in enumerate(["first", "second"], start=1):
        code, _, job = await Raw(ep, wid).take()
        assert (code, job["id"]) == (200, job_id)

        async def lost(n: int = n) -> bool:
            return (await health(ep))["jobs"]["retried"] == n

        await until(lost, f"lease {n} lapsed")
    body = await status_of(ep, job_id)
    assert body["status"] == "FAILED"
    assert body["errorDetails"]["error_type"] == "WorkerLost"
    assert "max_attempts=2" in body["error"]
    assert (await Raw(ep, "third").take())[0] == 204


# --- hand-back extension -----------------------------------------------------------------------------------


async def test_hand_back_requeues_at_the_front_without_counting_a_retry(pure: Any) -> None:
    w = Raw(pure)
    first, second = await leased(pure, w, 2)
    [later] = await queue(pure)
    code, _, reply = await w.call("POST", "job-handback/w1", body=json.dumps({"ids": [second, "unknown"]}).encode())
    assert (code, reply) == (200, {"ok": True, "handedBack": 1})
    assert (await status_of(pure, second))["status"] == "IN_QUEUE"
    assert (await health(pure))["jobs"]["retried"] == 0
    code, _, jobs = await Raw(pure, "w2").take_batch(2)
    assert [j["id"] for j in jobs] == [second, later]  # ahead of the job queued after it
    assert (await w.done(second, {"output": "handed back"}))[0] == 409
    assert (await status_of(pure, first))["status"] == "IN_PROGRESS"


async def test_hand_back_of_a_job_leased_to_another_worker_does_nothing(pure: Any) -> None:
    owner = Raw(pure, "owner")
    [job_id] = await leased(pure, owner)
    code, _, reply = await Raw(pure, "thief").call(
        "POST", "job-handback/thief", body=json.dumps({"ids": [job_id]}).encode()
    )
    assert (code, reply) == (200, {"ok": True, "handedBack": 0})
    assert (await status_of(pure, job_id))["status"] == "IN_PROGRESS"


async def test_hand_back_rejects_a_malformed_body(pure: Any) -> None:
    w = Raw(pure)
    for raw in [b'{"ids": "j1"}', b"[1]", b'{"ids": [1]}']:
        code, _, reply = await w.call("POST", "job-handback/w1", body=raw)
        assert code == 400
        assert "ids" in reply["error"]


# --- routing -----------------------------------------------------------------------------------------------


async def test_unknown_routes_and_endpoints_are_404_json(pure: Any) -> None:
    w = Raw(pure)
    code, _, body = await w.call("GET", "job-fetch/w1")
    assert code == 404
    assert "no such route" in body["error"]
    base = pure.url.rsplit("/", 1)[0]
    async with pure.http.get(f"{base}/other/job-take/w1") as r:
        assert r.status == 404
        assert "unknown endpoint" in (await r.json())["error"]
    code, _, body = await w.call("POST", "job-take/w1", body=b"{}")
    assert code == 405
