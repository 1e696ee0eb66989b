"""The live dashboard: a static page at ``/`` and ``/v2/{endpoint_id}/dashboard``, and its data routes.

The page (``static/dashboard.html``: no CDN, no build step) is served without the API key; its data comes from
the routes below, behind the key, which sit outside every rate-limit group so that open tabs never starve a
client of its /requests budget:

* ``GET dashboard/state``: one snapshot (queue, jobs by status as /health counts them, workers, the last five
  minutes of finished jobs per second, recent jobs);
* ``GET dashboard/events``: the snapshot once a second as newline-delimited JSON, read by ``fetch`` (an
  EventSource cannot send the Authorization header);
* ``GET dashboard/jobs/{job_id}?from=N&wait=ms``: one job with its input, result and stream items from N.

Everything is read through the state interface (serve/state/api.py); the per-second history is kept by an
``on_terminal`` hook, so it is this process's (with many replicas on one store each shows its own throughput).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from importlib import resources
from typing import Any

from aiohttp import web

from ... import codec
from ...models import JobStatus
from ..state.api import JobState, JobView
from .replies import json_reply
from .router import Routes
from .web import query_int

__all__ = ["History", "add_dashboard_routes"]

S = JobStatus
RECENT = 50
SERIES_S = 300
# A bucket's count column by status (failed and timed out share one).
_COLUMN = {S.COMPLETED: 1, S.CANCELLED: 3}


class History:
    """Finished jobs per second over the last ``span_s`` seconds: counts and latency sums (an on_terminal hook)."""

    def __init__(self, span_s: int = SERIES_S) -> None:
        self.span_s = span_s
        # [second, completed, failed, cancelled, delay sum, delays, execution sum, executions]
        self._buckets: deque[list[int]] = deque()
        self._last: list[int] | None = None  # the latest bucket (the deque's last)

    def on_terminal(self, r: JobView) -> None:
        if (ended := r.ended) is None:
            return
        sec = ended // 1000
        b = self._last
        if b is None or b[0] < sec:
            b = self._last = [sec, 0, 0, 0, 0, 0, 0, 0]
            buckets = self._buckets
            buckets.append(b)
            while buckets[0][0] <= sec - self.span_s:
                buckets.popleft()
        # (an earlier second: a clock that stepped back, counted in the latest second)
        b[_COLUMN.get(r.status, 2)] += 1
        if (started := r.started) is not None:
            b[4] += started - r.created
            b[5] += 1
            b[6] += ended - started
            b[7] += 1

    def series(self, now_ms: int) -> list[dict[str, Any]]:
        since = now_ms // 1000 - self.span_s
        return [
            {"t": b[0] * 1000, "completed": b[1], "failed": b[2], "cancelled": b[3],
             "delayMs": b[4] / b[5] if b[5] else None, "executionMs": b[6] / b[7] if b[7] else None}
            for b in self._buckets if b[0] > since
        ]  # fmt: skip


class Dashboard:
    def __init__(self, state: JobState, endpoint_id: str, events_s: float) -> None:
        self.state = state
        self.endpoint_id = endpoint_id
        self.events_s = events_s
        self.history = History()
        state.on_terminal.append(self.history.on_terminal)

    async def snapshot(self) -> dict[str, Any]:
        s = self.state
        now = s.now()
        return {
            "endpoint": self.endpoint_id, "now": now, "health": await s.health(), "workers": await s.workers(),
            "series": self.history.series(now), "recent": await s.recent(RECENT), "submitted": dict(s.submitted),
            "streamItems": s.stream_items,
        }  # fmt: skip

    async def state_route(self, request: web.Request) -> web.Response:
        return json_reply(await self.snapshot())

    async def events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        end = loop.time() + self.events_s
        with contextlib.suppress(ConnectionResetError):
            while True:
                await resp.write(codec.dumps(await self.snapshot()) + b"\n")
                left = end - loop.time()
                if left <= 0:
                    break
                await asyncio.sleep(min(1.0, left))
            await resp.write_eof()
        return resp

    async def job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        start = query_int(request, "from", 0, 0, 2**62) or 0
        wait_ms = query_int(request, "wait", 0, 0, 5000) or 0
        with self.state.watch(job_id) as w:
            r, items = await self.state.read_stream(job_id, start)
            if wait_ms and not r.status.terminal and not items and await w.wait(wait_ms / 1000):
                r, items = await self.state.read_stream(job_id, start)
        r = await self.state.status(job_id)  # the whole record (a store's stream read carries only the status)
        d = r.reply()
        d["input"] = await self.state.input_of(job_id)
        d["createdAt"] = r.created
        d["stream"] = [codec.Fragment(item) for item in items]
        d["streamTotal"] = start + len(items)
        return json_reply(d)


def _page(prefix: str) -> bytes:
    html = (resources.files("handler_sdk.serve.http") / "static" / "dashboard.html").read_bytes()
    # The page's one setting: where the endpoint's API is (it is served at / too).
    return html.replace(b"__ENDPOINT_PREFIX__", prefix.encode())


def add_dashboard_routes(routes: Routes, state: JobState, *, events_s: float = 300.0) -> None:
    d = Dashboard(state, routes.endpoint_id, events_s)
    page = _page(routes.prefix)

    async def show(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", headers={"Cache-Control": "no-cache"})

    routes.add("GET", "/", show, root=True, public=True)
    routes.add("GET", "/dashboard", show, public=True)
    routes.get("/dashboard/state", d.state_route)
    routes.get("/dashboard/events", d.events)
    routes.get("/dashboard/jobs/{job_id}", d.job)
