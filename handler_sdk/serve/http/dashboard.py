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
``on_terminal`` hook (``finishes.py``), so it is this process's (with many replicas on one store each shows its
own throughput).
"""

from __future__ import annotations

import asyncio
import contextlib
from importlib import resources
from typing import Any

from aiohttp import web

from ... import codec
from ..state.api import JobState
from .finishes import History
from .replies import json_reply
from .router import Routes
from .web import query_int

__all__ = ["add_dashboard_routes"]

RECENT = 50


class Dashboard:
    def __init__(self, state: JobState, history: History, endpoint_id: str, events_s: float) -> None:
        self.state = state
        self.endpoint_id = endpoint_id
        self.events_s = events_s
        self.history = history

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


def add_dashboard_routes(routes: Routes, state: JobState, history: History, *, events_s: float = 300.0) -> None:
    d = Dashboard(state, history, routes.endpoint_id, events_s)
    page = _page(routes.prefix)

    async def show(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", headers={"Cache-Control": "no-cache"})

    routes.add("GET", "/", show, root=True, public=True)
    routes.add("GET", "/dashboard", show, public=True)
    routes.get("/dashboard/state", d.state_route)
    routes.get("/dashboard/events", d.events)
    routes.get("/dashboard/jobs/{job_id}", d.job)
