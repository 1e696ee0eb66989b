"""Idempotency-Key on /run and /runsync (draft-ietf-httpapi-idempotency-key-header): a repeat returns the same job,
another request under the same key is a 422, a malformed key a 400; /run keys survive a restart."""

from __future__ import annotations

import asyncio
import json
import string
import sys

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from handler_sdk.errors import BadRequest, Unprocessable
from handler_sdk.models import JobReply, RunRequest
from handler_sdk.serve.state.broker import Broker, BrokerConfig
from handler_sdk.serve.state.idempotency import MAX_KEY, IdempotencyKeys, parse_key

# The same tests on both job stores: the embedded default and a real redis-server.
pytestmark = pytest.mark.stores("sqlite", "redis")


def key(k: str) -> dict[str, str]:
    return {"Idempotency-Key": k}


async def test_a_repeated_run_with_the_same_key_and_body_returns_the_same_job(endpoint_factory):
    ep = await endpoint_factory(None)  # a pure queue: the job stays queued
    body = {"input": {"prompt": "hi", "n": [1, 2]}, "policy": {"ttl": 60000}}
    async with ep.http.post(f"{ep.url}/run", json=body, headers=key('"order-17"')) as r:
        first = await r.json()
        assert r.status == 200 and "Idempotent-Replayed" not in r.headers
    # The same request, keys in another order and the key bare: the same job, said to be a replay.
    again = {"policy": {"ttl": 60000}, "input": {"n": [1, 2], "prompt": "hi"}}
    async with ep.http.post(f"{ep.url}/run", json=again, headers=key("order-17")) as r:
        second = await r.json()
        assert r.status == 200 and r.headers["Idempotent-Replayed"] == "true"
    assert second == first
    _, listed = await ep.get("requests")
    assert listed["total"] == 1
    # Another key is another job.
    _, third = await ep.post("run", body, headers=key("order-18"))
    assert third["id"] != first["id"]


async def test_a_repeated_runsync_waits_for_the_same_job_and_replies_with_its_result(endpoint_factory):
    ep = await endpoint_factory("nonce.py")
    body = {"input": {"sleep": 0.3}}
    a, b = await asyncio.gather(
        ep.post("runsync", body, headers=key("sync-1")), ep.post("runsync", body, headers=key("sync-1"))
    )
    assert a[0] == b[0] == 200
    assert a[1] == b[1]  # one job: the same id and the same nonce
    assert JobReply.model_validate(a[1]).status.value == "COMPLETED"
    # After it finished, within its retention, a repeat answers at once with the same result.
    assert (await ep.post("runsync", body, headers=key("sync-1")))[1] == a[1]
    assert (await ep.post("runsync", body, headers=key("sync-2")))[1]["output"] != a[1]["output"]
    _, listed = await ep.get("requests")
    assert listed["total"] == 2


@pytest.mark.parametrize(
    ("route", "other"),
    [
        ("run", {"input": {"a": 2}}),
        ("run", {"input": {"a": 1}, "policy": {"lowPriority": True}}),
        ("run", {"input": {"a": 1}, "webhook": "http://127.0.0.1:9/hook"}),
        ("runsync", {"input": {"a": 1}}),  # the route is part of the request
    ],
)
async def test_the_same_key_with_another_request_is_a_422_and_makes_no_job(endpoint_factory, route, other):
    ep = await endpoint_factory(None)
    _, first = await ep.post("run", {"input": {"a": 1}}, headers=key("k"))
    code, err = await ep.post(route, other, headers=key("k"), params={"wait": "1000"})
    assert code == 422
    assert "Idempotency-Key 'k' was used for a different request" in err["error"] and first["id"] in err["error"]
    assert (await ep.get("requests"))[1]["total"] == 1


@pytest.mark.parametrize("bad", ['""', '"', '"abc', '"a"b"', '"a\\x"', "", "a b", "a" * (MAX_KEY + 1), 'ab"c'])
async def test_a_malformed_key_is_a_400_and_makes_no_job(endpoint_factory, bad):
    ep = await endpoint_factory(None)
    for route in ("run", "runsync"):
        code, err = await ep.post(route, {"input": {}}, headers=key(bad))
        assert code == 400 and "malformed Idempotency-Key header" in err["error"]
    assert (await ep.get("requests"))[1]["total"] == 0


_PRINTABLE = st.text(alphabet=st.sampled_from([chr(c) for c in range(0x20, 0x7F)]), min_size=1, max_size=MAX_KEY)


@given(_PRINTABLE)
def test_any_printable_key_round_trips_as_a_structured_field_string(k):
    quoted = '"' + k.replace("\\", "\\\\").replace('"', '\\"') + '"'
    assert parse_key(quoted) == k


@given(st.text(min_size=1, max_size=40))
def test_a_bare_key_is_accepted_exactly_when_it_is_visible_ascii_without_quotes_or_backslashes(k):
    v = k.strip(" \t")  # a header value's surrounding whitespace is not part of it (RFC 9110 5.5)
    ok = bool(v) and all(c in string.printable and c not in ' "\\\t\n\r\x0b\x0c' for c in v)
    if ok:
        assert parse_key(k) == v
    elif not v.startswith('"'):
        with pytest.raises(BadRequest):
            parse_key(k)


async def test_run_keys_survive_a_restart(endpoint_factory, tmp_path):
    data = tmp_path / "data"
    first = await endpoint_factory(None, data_dir=data)
    _, job = await first.post("run", {"input": {"x": 1}}, headers=key("durable"))
    await first.server.close()

    second = await endpoint_factory(None, data_dir=data)
    assert (await second.post("run", {"input": {"x": 1}}, headers=key("durable")))[1]["id"] == job["id"]
    assert (await second.post("run", {"input": {"x": 2}}, headers=key("durable")))[0] == 422
    assert (await second.get("requests"))[1]["total"] == 1


async def test_a_key_is_free_again_once_its_job_is_past_retention_or_purged(endpoint_factory):
    ep = await endpoint_factory("nonce.py")
    _, job = await ep.post("run", {"input": {}}, headers=key("reused"))
    await ep.wait_status(job["id"], "COMPLETED")
    await ep.get(f"status/{job['id']}", params={"ttl": "0"})  # retention ends now
    for _ in range(200):
        if (await ep.get(f"status/{job['id']}"))[0] == 404:
            break
        await asyncio.sleep(0.02)
    _, fresh = await ep.post("run", {"input": {"another": "body"}}, headers=key("reused"))
    assert fresh["id"] != job["id"]  # a new job, with no 422: the old request is forgotten

    queue = await endpoint_factory(None)
    _, queued = await queue.post("run", {"input": {}}, headers=key("purged"))
    await queue.post("purge-queue")
    _, after = await queue.post("run", {"input": {}}, headers=key("purged"))
    assert after["id"] != queued["id"]


async def test_keys_of_expired_jobs_are_swept_so_the_index_stays_bounded():
    now = [0]
    broker = Broker(None, BrokerConfig(sync_retention_ms=10), clock=lambda: now[0])
    keys = IdempotencyKeys(broker)
    for i in range(5000):
        r, replayed = keys.submit(RunRequest(input={"i": i}), f"k{i}", sync=True)
        assert not replayed
        broker.cancel(r.id)  # ends at once; retained 10 ms
        now[0] += 5
        broker.expire_due()
        assert len(broker.jobs) <= 3
        assert len(keys) <= 2 * 1024 + 1
    # A retained job's key still answers.
    again, replayed = keys.submit(RunRequest(input={"i": 4999}), "k4999", sync=True)
    assert (again.id, replayed) == (r.id, True)  # the same job (a finished one reads back as a copy)
    with pytest.raises(Unprocessable):
        keys.submit(RunRequest(input={"i": 0}), "k4999", sync=True)


@pytest.mark.stores("sqlite")  # reads the in-memory broker
async def test_the_idempotent_submit_example_gets_one_job_for_a_retried_submit(endpoint_factory):
    ep = await endpoint_factory(None)
    script = ROOT / "examples" / "clients" / "idempotent_submit.py"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), ep.url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    said = json.loads(out)
    assert said["first"] == said["retry"] and said["replayed"] and said["other_body"] == 422
    assert (await ep.get("requests"))[1]["total"] == 1


class KeysMachine(RuleBasedStateMachine):
    """Keys against a broker whose jobs end, expire, are purged and retried: a key answers with its job exactly
    while that job is retained, refuses another request meanwhile, and is free once the job is gone."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0
        self.broker = Broker(None, BrokerConfig(run_retention_ms=50, sync_retention_ms=20), clock=lambda: self.now)
        self.keys = IdempotencyKeys(self.broker)
        self.owner: dict[str, tuple[str, int, bool]] = {}  # key -> (job id, body, sync), as the model sees it

    @rule(k=st.sampled_from("abcde"), body=st.integers(0, 2), sync=st.booleans())
    def submit(self, k: str, body: int, sync: bool) -> None:
        req = RunRequest(input={"b": body})
        known = self.owner.get(k)
        if known is not None and known[0] not in self.broker.jobs:
            known = None  # its job is gone: the key is free
        if known is not None and (known[1], known[2]) != (body, sync):
            with pytest.raises(Unprocessable):
                self.keys.submit(req, k, sync=sync)
            return
        r, replayed = self.keys.submit(req, k, sync=sync)
        assert replayed == (known is not None)
        if known is not None:
            assert r.id == known[0]
        self.owner[k] = (r.id, body, sync)

    @rule(k=st.sampled_from("abcde"))
    def finish(self, k: str) -> None:
        known = self.owner.get(k)
        if known is not None and known[0] in self.broker.jobs:
            self.broker.cancel(known[0])

    @rule(ms=st.integers(1, 40))
    def time_passes(self, ms: int) -> None:
        self.now += ms
        self.broker.expire_due()

    @rule()
    def purge(self) -> None:
        self.broker.purge()

    @invariant()
    def never_more_keys_than_submits_of_retained_jobs_allow(self) -> None:
        assert len(self.keys) <= max(1024, 2 * len(self.broker.jobs)) + 1


TestKeysMachine = KeysMachine.TestCase
TestKeysMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
