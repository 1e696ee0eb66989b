"""Errors on a real endpoint: how a failing handler reads on /status, runpod's conventions, and bad requests
(400, 401, 404, 405, 409) answered as JSON. Nothing anybody sends gets a 500."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handler_sdk.models import JobReply, JobStatus

# The same tests on both job stores: the embedded default and a real redis-server.
pytestmark = pytest.mark.stores("sqlite", "redis")

ALLOWED = {200, 204, 400, 401, 404, 405, 409, 413, 429}


def failed(body: dict[str, Any]) -> JobReply:
    r = JobReply.model_validate(body)
    assert r.status is JobStatus.FAILED, body
    assert isinstance(body["error"], str)
    assert r.errorDetails is not None
    assert set(body["errorDetails"]) == {"error_type", "error_message", "error_traceback", "worker_id", "hostname"}
    return r


# --- a failing handler ---------------------------------------------------------------------------------------


async def test_a_handler_exception_fails_the_job_with_a_string_error_and_structured_details(endpoint_factory):
    ep = await endpoint_factory("raises.py")
    code, body = await ep.post("runsync", {"input": {"why": "disk full"}})
    assert code == 200
    r = failed(body)
    assert r.error == "ValueError: boom: disk full"
    d = r.errorDetails
    assert d is not None
    assert (d.error_type, d.error_message) == ("ValueError", "boom: disk full")
    assert d.error_traceback is not None and "raise ValueError" in d.error_traceback
    assert d.worker_id == ep.server.local_worker_id and d.hostname == socket.gethostname()
    assert r.executionTime is not None and r.output is None
    # The same job read again on /status and via /run.
    assert (await ep.get(f"status/{r.id}"))[1] == body
    _, run = await ep.post("run", {"input": {}})
    assert failed(await ep.wait_status(run["id"], "FAILED")).error == "ValueError: boom: no reason"


async def test_an_output_that_is_not_json_serializable_fails_the_job_clearly(endpoint_factory):
    ep = await endpoint_factory("ep_errors.py:not_json")
    code, body = await ep.post("runsync", {"input": {}})
    assert code == 200
    r = failed(body)
    assert r.error is not None and "not JSON-serializable" in r.error
    assert r.errorDetails is not None and r.errorDetails.error_type == "OutputNotSerializable"
    assert (await ep.get(f"status/{r.id}"))[0] == 200


@pytest.mark.stores("sqlite")  # reads the in-memory broker
async def test_invalid_typed_input_fails_before_the_handler_runs_naming_the_fields(endpoint_factory):
    ep = await endpoint_factory("ep_errors.py:typed")
    ran: list[Any] = ep.server.h.fn.__globals__["RAN"]
    code, body = await ep.post("runsync", {"input": {"n": "many"}})
    assert code == 200
    r = failed(body)
    assert r.errorDetails is not None and r.errorDetails.error_type == "InvalidInput"
    assert r.error is not None and "prompt" in r.error and "n" in r.error
    assert "prompt" in r.errorDetails.error_message
    assert ran == []
    _, ok = await ep.post("runsync", {"input": {"prompt": "hi", "n": "2"}})
    assert ok["status"] == "COMPLETED" and ok["output"] == {"prompt": "hi", "n": 2}
    assert len(ran) == 1


async def test_a_returned_error_dict_fails_the_job_runpod_style(endpoint_factory):
    ep = await endpoint_factory("runpod_style.py")
    _, body = await ep.post("runsync", {"input": {"fail": True}})
    r = failed(body)
    assert r.error is not None and "asked to fail" in r.error
    assert r.errorDetails is not None and r.errorDetails.error_message == "asked to fail"
    # Mapping access on the job works for dict-style code.
    _, ok = await ep.post("runsync", {"input": {"x": 1}})
    assert ok["status"] == "COMPLETED"
    assert ok["output"] == {"echo": {"x": 1}, "id_seen": ok["id"]}


async def test_a_late_second_result_is_a_409_and_the_first_result_stands(endpoint_factory):
    ep = await endpoint_factory(None)  # a pure queue; this test plays the remote worker
    _, body = await ep.post("run", {"input": {}})
    job_id = body["id"]
    code, taken = await ep.get("job-take/w1?job_in_progress=0")
    assert code == 200 and taken["id"] == job_id
    code, refused = await ep.post(f"job-done/w2/{job_id}", {"output": "not mine"})
    assert code == 409 and "w2" in refused["error"]
    assert (await ep.post(f"job-done/w1/{job_id}", {"output": "first"}))[0] == 200
    code, refused = await ep.post(f"job-done/w1/{job_id}", {"output": "second"})
    assert code == 409
    assert (await ep.post(f"job-done/w1/{job_id}", {"error": "too late"}))[0] == 409
    _, st = await ep.get(f"status/{job_id}")
    assert st["status"] == "COMPLETED" and st["output"] == "first" and "error" not in st
    assert (await ep.post("job-done/w1/no-such-job", {"output": 1}))[0] == 404


# --- bad requests --------------------------------------------------------------------------------------------


async def raw(ep: Any, method: str, op: str, data: bytes | None = None, **kw: Any) -> tuple[int, Any]:
    headers = {**ep.headers, **kw.pop("headers", {})}
    async with ep.http.request(method, f"{ep.url}/{op}", data=data, headers=headers, **kw) as r:
        assert r.content_type == "application/json", (r.status, await r.text())
        return r.status, await r.json()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"not json",
        b'{"input": {"a": 1}',
        b"[]",
        b'"input"',
        b"null",
        b"{}",
        b'{"inputs": {}}',
        b'{"input": null}',
        b'{"input": []}',
        b'{"input": "text"}',
        b'{"input": 5}',
        b'{"input": {}, "policy": {"executionTimeout": "soon"}}',
        b'{"input": {}, "policy": {"executionTimeout": 0}}',
        b'{"input": {}, "policy": {"ttl": -5}}',
        b'{"input": {}, "policy": {"ttl": [1]}}',
        b'{"input": {}, "policy": {"lowPriority": {"a": 1}}}',
        b'{"input": {}, "policy": "fast"}',
        b'{"input": {}, "webhook": "ftp://example.com/hook"}',
        b'{"input": {}, "webhook": "not a url"}',
        b'{"input": {}, "webhook": 42}',
    ],
)
async def test_bad_submit_bodies_are_a_400_with_a_json_error(endpoint_factory, data):
    ep = await endpoint_factory("echo_async.py")
    for op in ("run", "runsync"):
        code, body = await raw(ep, "POST", op, data, headers={"Content-Type": "application/json"})
        assert code == 400, (op, data, body)
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    _, health = await ep.get("health")
    assert health["jobs"]["inQueue"] + health["jobs"]["completed"] == 0  # nothing was submitted


async def test_a_400_names_what_is_wrong(endpoint_factory):
    ep = await endpoint_factory("echo_async.py")
    code, body = await raw(ep, "POST", "run", b'{"input": {}, "policy": {"ttl": "x"}}')
    assert code == 400 and "ttl" in body["error"]
    code, body = await raw(ep, "POST", "run", b'{"input": {}, "webhook": "ftp://x"}')
    assert code == 400 and "webhook" in body["error"]
    code, body = await raw(ep, "POST", "run", b"{oops")
    assert code == 400 and "JSON" in body["error"]
    code, body = await raw(ep, "POST", "run", b"{}")
    assert code == 400 and "input" in body["error"]


async def test_unknown_routes_endpoints_and_methods_are_json_errors(endpoint_factory):
    ep = await endpoint_factory("echo_async.py")
    base = f"http://127.0.0.1:{ep.server.port}"
    cases = [
        ("GET", f"{base}/v2/local/nope", 404),
        ("GET", f"{base}/v2/other/health", 404),
        ("POST", f"{base}/v2/other/run", 404),
        ("GET", f"{base}/nothing/here", 404),
        ("POST", f"{base}/", 405),  # GET / is the dashboard page
        ("GET", f"{ep.url}/run", 405),
        ("DELETE", f"{ep.url}/status/x", 405),
        ("GET", f"{ep.url}/cancel/x", 405),
    ]
    for method, url, want in cases:
        async with ep.http.request(method, url) as r:
            assert r.status == want, (method, url)
            body = await r.json(content_type=None)
            assert isinstance(body["error"], str), body
            if want == 405:
                assert method not in r.headers["Allow"].split(","), r.headers["Allow"]
                assert "POST" in r.headers["Allow"] or "GET" in r.headers["Allow"]
    async with ep.http.get(f"{base}/v2/other/health") as r:
        assert "unknown endpoint 'other'" in (await r.json())["error"]
    code, body = await ep.get("health")
    assert code == 200


async def test_with_an_api_key_client_routes_need_bearer_auth(endpoint_factory):
    ep = await endpoint_factory("echo_async.py", api_key="s3cret")
    assert ep.headers == {"Authorization": "Bearer s3cret"}
    code, body = await ep.post("runsync", {"input": {"a": 1}})
    assert code == 200 and body["status"] == "COMPLETED"
    job_id = body["id"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}, {"Authorization": "Basic x"}):
        for method, op in [
            ("POST", "run"),
            ("POST", "runsync"),
            ("GET", f"status/{job_id}"),
            ("POST", f"stream/{job_id}"),
            ("POST", f"cancel/{job_id}"),
            ("GET", "health"),
            ("POST", "purge-queue"),
            ("GET", "requests"),
        ]:
            code, body = await ep.call(method, op, {"input": {}}, headers=headers)
            assert code == 401, (headers, op)
            assert "key" in body["error"]
    # Auth is checked before routing: an unknown endpoint id or route with a wrong key is a 401, not a 404.
    base = f"http://127.0.0.1:{ep.server.port}/v2"
    async with ep.http.get(f"{base}/other/health") as r:
        assert r.status == 401
    async with ep.http.get(f"{base}/other/health", headers=ep.headers) as r:
        assert r.status == 404
    # The job is untouched by the refused cancel.
    assert (await ep.get(f"status/{job_id}"))[1]["status"] == "COMPLETED"


# --- no input gets a 500 -------------------------------------------------------------------------------------

OPS = [
    "run",
    "runsync",
    "status",
    "status-sync",
    "stream",
    "cancel",
    "retry",
    "purge-queue",
    "health",
    "requests",
    "job-take",
    "job-take-batch",
    "job-stop",
    "job-done",
    "job-stream",
    "ping",
    "job-handback",
    "openai",
]
segment = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="/?#%\\"), max_size=12
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"input": json_values},
        optional={"policy": json_values, "webhook": json_values},
    ).map(lambda v: json.dumps(v).encode()),
)
queries = st.dictionaries(
    st.sampled_from(["wait", "ttl", "from", "limit", "offset", "status", "batch_size", "job_in_progress", "isStream"]),
    st.one_of(st.integers(-(10**20), 10**20).map(str), st.text(max_size=8)),
    max_size=3,
)


@pytest.fixture
async def fuzz_ep(endpoint_factory: Any) -> Any:
    """One server for every example: hypothesis runs all examples inside one use of a function-scoped fixture."""
    return await endpoint_factory("echo_async.py", api_key="k", rate_limits=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    op=st.sampled_from(OPS),
    tail=st.lists(segment, max_size=3),
    endpoint=st.sampled_from(["local", "local", "local", "other"]),
    query=queries,
    body=bodies,
    auth=st.sampled_from(["Bearer k", "Bearer k", "Bearer k", None, "k", "Bearer nope"]),
)
async def test_no_request_ever_gets_a_500(fuzz_ep, method, op, tail, endpoint, query, body, auth):
    ep = fuzz_ep
    path = "/".join([f"http://127.0.0.1:{ep.server.port}/v2", endpoint, op, *tail])
    headers = {"Authorization": auth} if auth else {}
    async with ep.http.request(method, path, params=query, data=body, headers=headers) as r:
        text = await r.text()
        assert r.status in ALLOWED, (r.status, method, path, query, body, text)
        if r.status >= 400 and method != "HEAD":
            assert r.content_type == "application/json", text
