"""A local webhook receiver on loopback (the ``receiver_factory`` fixture) for the webhook tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web


@dataclass
class Receiver:
    """A local webhook target that answers 500 to its first ``fail_first`` calls."""

    fail_first: int = 0
    calls: list[tuple[int, dict[str, Any], str]] = field(default_factory=list)
    accepted: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    # Every request as it came: raw body and headers (for signature checks).
    raw: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    # While set to an unset Event, requests wait for it (a receiver that is slow to answer).
    hold: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        data = await request.read()
        self.raw.append((data, dict(request.headers)))
        if self.hold is not None:
            await self.hold.wait()
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
