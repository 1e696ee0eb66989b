"""Webhooks: the final job JSON is POSTed to the request's ``webhook`` URL, retried with backoff until it lands."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from handler_sdk.models import JobReply


@dataclass
class Receiver:
    """A local webhook target that answers 500 to its first ``fail_first`` calls."""

    fail_first: int = 0
    calls: list[tuple[int, dict[str, Any], str]] = field(default_factory=list)
    accepted: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        n = len(self.calls)
        status = 500 if n < self.fail_first else 200
        self.calls.append((status, body, request.content_type))
        if status == 200:
            self.accepted.set()
        return web.json_response({"n": n}, status=status)


@pytest.fixture
async def receiver_factory() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def make(fail_first: int = 0) -> Receiver:
        rec = Receiver(fail_first)
        app = web.Application()
        app.router.add_post("/hook", rec.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        return rec

    yield make
    for r in runners:
        await r.cleanup()


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
    assert final == (await ep.get(f"status/{body['id']}"))[1]
    await asyncio.sleep(0.2)
    assert len(rec.calls) == 3  # delivered once, never again


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
