"""Webhooks: the job's events are POSTed to the request's ``webhook`` URL (Standard Webhooks: signed, with an id
stable across retries), in order, retried with backoff until they land; floods of progress and output coalesce."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from aiohttp import web
from conftest import ROOT
from standardwebhooks import Webhook, WebhookVerificationError
from webhook_receiver import Receiver

from handler_sdk.loader import load_handler
from handler_sdk.models import JobReply, WebhookBody


@pytest.mark.stores("sqlite", "redis")  # completed events: the Redis store's outbox too
async def test_the_webhook_gets_the_final_job_json_after_failing_twice(endpoint_factory, receiver_factory):
    rec = await receiver_factory(fail_first=2)
    ep = await endpoint_factory("echo_async.py", webhook_backoff_s=0.05)
    _, body = await ep.post("run", {"input": {"hello": "hook"}, "webhook": rec.url})
    async with asyncio.timeout(15):
        await rec.accepted.wait()
    assert [c[0] for c in rec.calls] == [500, 500, 200]
    final = rec.calls[-1][1]
    assert all(c[1] == final for c in rec.calls)  # the same body on every attempt
    assert rec.calls[-1][2] == "application/json"
    r = JobReply.model_validate(final)
    assert r.id == body["id"] and r.status.value == "COMPLETED" and r.output == {"hello": "hook"}
    assert final == {**(await ep.get(f"status/{body['id']}"))[1], "event": "completed"}
    await asyncio.sleep(0.2)
    assert len(rec.calls) == 3  # delivered once, never again


@pytest.mark.stores("sqlite", "redis")  # completed events: the Redis store's outbox too
async def test_failed_and_runsync_jobs_notify_their_webhooks_too(endpoint_factory, receiver_factory):
    rec = await receiver_factory()
    ep = await endpoint_factory("raises.py", webhook_backoff_s=0.05)
    _, body = await ep.post("runsync", {"input": {"why": "hooked"}, "webhook": rec.url})
    assert body["status"] == "FAILED"
    async with asyncio.timeout(15):
        await rec.accepted.wait()
    final = rec.calls[0][1]
    assert final["id"] == body["id"] and final["status"] == "FAILED"
    assert final["error"] == "ValueError: boom: hooked"


@pytest.mark.stores("sqlite", "redis")  # completed events: the Redis store's outbox too
async def test_a_webhook_that_never_accepts_is_dropped_after_its_attempts(endpoint_factory, receiver_factory):
    rec = await receiver_factory(fail_first=100)
    ep = await endpoint_factory("echo_async.py", webhook_backoff_s=0.02, webhook_attempts=3)
    _, body = await ep.post("run", {"input": {}, "webhook": rec.url})
    await ep.wait_status(body["id"], "COMPLETED")
    for _ in range(250):
        if len(rec.calls) >= 3:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    assert len(rec.calls) == 3
    # The job itself is unaffected.
    assert (await ep.get(f"status/{body['id']}"))[1]["status"] == "COMPLETED"


@pytest.mark.stores("sqlite", "redis")  # completed events: the Redis store's outbox too
async def test_a_job_without_a_webhook_posts_nothing(endpoint_factory, receiver_factory):
    rec = await receiver_factory()
    ep = await endpoint_factory("echo_async.py", webhook_backoff_s=0.02)
    _, with_hook = await ep.post("run", {"input": {"a": 1}, "webhook": rec.url})
    _, without = await ep.post("run", {"input": {"b": 2}})
    await ep.wait_status(without["id"], "COMPLETED")
    async with asyncio.timeout(15):
        await rec.accepted.wait()
    await asyncio.sleep(0.2)
    assert [c[1]["id"] for c in rec.calls] == [with_hook["id"]]


# --- Standard Webhooks: signatures, ids, events ----------------------------------------------------------------

SECRET = "whsec_" + base64.b64encode(b"handler-sdk-test-secret-bytes!").decode()


def accepted_bodies(rec: Receiver) -> list[dict[str, Any]]:
    return [body for status, body, _ in rec.calls if status == 200]


async def completed(rec: Receiver, timeout: float = 15) -> list[dict[str, Any]]:
    async with asyncio.timeout(timeout):
        while not any(b["event"] == "completed" for b in accepted_bodies(rec)):
            await asyncio.sleep(0.02)
    return accepted_bodies(rec)


async def test_signed_webhooks_verify_with_standardwebhooks_and_keep_their_id_across_retries(
    endpoint_factory, receiver_factory
):
    rec = await receiver_factory(fail_first=2)
    ep = await endpoint_factory("echo_async.py", webhook_backoff_s=0.05, webhook_secret=SECRET)
    _, job = await ep.post("run", {"input": {"signed": True}, "webhook": rec.url})
    await completed(rec)
    assert len(rec.raw) == 3
    verifier = Webhook(SECRET)
    for data, headers in rec.raw:
        assert verifier.verify(data, headers)["id"] == job["id"]
        assert headers["webhook-signature"].startswith("v1,")
    assert len({h["webhook-id"] for _, h in rec.raw}) == 1  # one event: one id on every attempt
    data, headers = rec.raw[-1]
    with pytest.raises(WebhookVerificationError):
        verifier.verify(data.replace(b"COMPLETED", b"FAILED"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"another secret").decode()).verify(data, headers)


async def test_unsigned_webhooks_still_carry_an_id_and_a_timestamp(endpoint_factory, receiver_factory):
    rec = await receiver_factory()
    ep = await endpoint_factory("echo_async.py")
    await ep.post("run", {"input": {}, "webhook": rec.url})
    await completed(rec)
    [(_, headers)] = rec.raw
    assert headers["webhook-id"].startswith("msg_") and int(headers["webhook-timestamp"]) > 0
    assert "webhook-signature" not in headers


async def test_each_requested_event_arrives_in_order_with_every_stream_item_once(endpoint_factory, receiver_factory):
    rec = await receiver_factory()
    ep = await endpoint_factory("hooked.py", webhook_secret=SECRET)
    events = ["start", "progress", "output", "completed"]
    _, job = await ep.post("run", {"input": {"n": 5, "pause": 0.02}, "webhook": rec.url, "webhookEvents": events})
    bodies = await completed(rec)
    for data, headers in rec.raw:
        Webhook(SECRET).verify(data, headers)
    kinds = [b["event"] for b in bodies]
    assert kinds[0] == "start" and kinds[-1] == "completed" and kinds.count("completed") == 1
    assert {"progress", "output"} <= set(kinds)
    for b in bodies:
        WebhookBody.model_validate(b)
        assert b["id"] == job["id"]
    assert bodies[-1]["status"] == "COMPLETED"
    items = [item for b in bodies if b["event"] == "output" for item in b["stream"]]
    assert [i["output"] for i in items] == [{"i": i} for i in range(5)]
    assert [i["metrics"]["stream_index"] for i in items] == list(range(5))
    steps = [b["output"]["step"] for b in bodies if b["event"] == "progress"]
    assert steps == sorted(set(steps))
    assert len({h["webhook-id"] for _, h in rec.raw}) == len(rec.raw)  # one id per event
    for _ in range(100):  # nothing is kept for a job once its events are out
        if not ep.server.webhooks._boxes:
            break
        await asyncio.sleep(0.01)
    assert not ep.server.webhooks._boxes


async def test_by_default_only_the_end_of_a_job_is_sent(endpoint_factory, receiver_factory):
    rec = await receiver_factory()
    ep = await endpoint_factory("hooked.py")
    _, job = await ep.post("run", {"input": {"n": 4}, "webhook": rec.url})
    await ep.wait_status(job["id"], "COMPLETED")
    assert [b["event"] for b in await completed(rec)] == ["completed"]
    await asyncio.sleep(0.2)
    assert len(rec.raw) == 1


async def test_a_flood_of_progress_and_output_coalesces_while_the_receiver_is_slow(endpoint_factory, receiver_factory):
    rec = await receiver_factory()
    rec.hold = asyncio.Event()
    ep = await endpoint_factory("hooked.py")
    n = 3000
    body = {"input": {"n": n}, "webhook": rec.url, "webhookEvents": ["start", "progress", "output", "completed"]}
    _, job = await ep.post("run", body)
    await ep.wait_status(job["id"], "COMPLETED")
    # The start event is held at the receiver; everything since waits as at most one progress, one output and the
    # completed event, however many updates and items the job made.
    assert 1 <= ep.server.webhooks.pending() <= 3
    rec.hold.set()
    bodies = await completed(rec)
    assert len(bodies) <= 4
    items = [item["output"]["i"] for b in bodies if b["event"] == "output" for item in b["stream"]]
    assert items == list(range(n))


async def test_output_events_split_a_backlog_over_the_batch_size_and_lose_nothing(endpoint_factory, receiver_factory):
    rec = await receiver_factory()
    rec.hold = asyncio.Event()
    ep = await endpoint_factory("hooked.py")
    ep.server.webhooks.output_batch_bytes = 2000  # ~40 items an event
    body = {"input": {"n": 300}, "webhook": rec.url, "webhookEvents": ["start", "output", "completed"]}
    _, job = await ep.post("run", body)
    await ep.wait_status(job["id"], "COMPLETED")
    rec.hold.set()
    bodies = await completed(rec)
    outputs = [b for b in bodies if b["event"] == "output"]
    assert len(outputs) >= 300 * 50 // 2000
    assert all(items_bytes(b["stream"]) <= 2000 for b in outputs)
    assert [i["output"]["i"] for b in outputs for i in b["stream"]] == list(range(300))
    assert bodies[-1]["event"] == "completed"


def items_bytes(items: list[dict[str, Any]]) -> int:
    """The items' size as the endpoint stores them (compact JSON)."""
    return sum(len(json.dumps(i, separators=(",", ":"))) for i in items)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"input": {}, "webhook": "http://127.0.0.1:9/h", "webhookEvents": ["finished"]}, "webhookEvents.0"),
        ({"input": {}, "webhookEvents": ["start"]}, "webhookEvents needs a webhook URL"),
    ],
)
async def test_bad_webhook_events_are_a_400(endpoint_factory, body, why):
    ep = await endpoint_factory(None)
    code, err = await ep.post("run", body)
    assert code == 400 and why in err["error"]


async def test_the_events_a_run_job_asked_for_survive_a_restart(endpoint_factory, receiver_factory, tmp_path):
    rec = await receiver_factory()
    data = tmp_path / "data"
    queue = await endpoint_factory(None, data_dir=data)
    _, job = await queue.post("run", {"input": {"n": 2}, "webhook": rec.url, "webhookEvents": ["start", "completed"]})
    await queue.server.close()
    await endpoint_factory("hooked.py", data_dir=data)
    bodies = await completed(rec)
    assert [b["event"] for b in bodies] == ["start", "completed"] and bodies[0]["id"] == job["id"]


def test_a_malformed_webhook_secret_stops_serve_at_start_with_a_message(tmp_path):
    env = {**os.environ, "HANDLER_SDK_WEBHOOK_SECRET": "whsec_not base64!"}
    r = subprocess.run(
        [sys.executable, "-m", "handler_sdk.serve", "--data-dir", str(tmp_path), "--port", "0"],
        capture_output=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert "webhook secret must be 'whsec_' followed by base64" in r.stderr.decode()


async def test_the_webhook_receiver_example_verifies_every_event_of_the_webhooks_example(endpoint_factory):
    spec = importlib.util.spec_from_file_location("webhook_receiver", ROOT / "examples/clients/webhook_receiver.py")
    assert spec is not None and spec.loader is not None
    receiver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(receiver)
    seen: list[dict[str, Any]] = []
    runner = web.AppRunner(receiver.make_app(SECRET, seen), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        h = load_handler(str(ROOT / "examples/webhooks.py"))
        ep = await endpoint_factory(h, webhook_secret=SECRET)
        events = ["start", "progress", "output", "completed"]
        _, job = await ep.post("run", {"input": {"steps": 3}, "webhook": url, "webhookEvents": events})
        async with asyncio.timeout(15):
            while not seen or seen[-1]["event"] != "completed":
                await asyncio.sleep(0.02)
        assert {e["event"] for e in seen} == set(events) and all(e["id"] == job["id"] for e in seen)
        assert [i["output"] for e in seen if e["event"] == "output" for i in e["stream"]] == [
            {"step": 1}, {"step": 2}, {"step": 3}
        ]  # fmt: skip
        # A wrong signature is refused by the example.
        async with ep.http.post(url, data=b"{}", headers={"webhook-id": "x", "webhook-timestamp": "1",
                                                          "webhook-signature": "v1,AAAA"}) as r:  # fmt: skip
            assert r.status == 401
    finally:
        await runner.cleanup()


async def test_a_retried_job_sends_its_new_stream_items_too(endpoint_factory, receiver_factory, tmp_path):
    rec = await receiver_factory()
    ep = await endpoint_factory("hooked.py")
    flag = tmp_path / "ok"
    body = {"input": {"n": 3, "fail_unless": str(flag)}, "webhook": rec.url, "webhookEvents": ["output", "completed"]}
    _, job = await ep.post("run", body)
    first = await completed(rec)
    assert first[-1]["status"] == "FAILED"
    flag.touch()
    assert (await ep.post(f"retry/{job['id']}"))[0] == 200
    async with asyncio.timeout(15):
        while [b["event"] for b in accepted_bodies(rec)].count("completed") < 2:
            await asyncio.sleep(0.02)
    bodies = accepted_bodies(rec)
    assert bodies[-1]["status"] == "COMPLETED"
    split = next(i for i, b in enumerate(bodies) if b["event"] == "completed")
    for attempt in (bodies[:split], bodies[split + 1 :]):
        assert [i["output"]["i"] for b in attempt if b["event"] == "output" for i in b["stream"]] == [0, 1, 2]
