"""A loopback proxy in front of serve that can answer 503, or drop connections, for a while."""

from __future__ import annotations

import aiohttp
from aiohttp import web


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode = "ok"  # "ok", "503" or "drop"
        self.counts = {"ok": 0, "503": 0, "drop": 0}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    async def start(self) -> FaultProxy:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        mode = self.mode
        self.counts[mode] += 1
        if mode == "503":
            return web.Response(status=503, text="down for a test", headers={"Retry-After": "1"})
        if mode == "drop":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)  # never sent: the connection is gone
        assert self._session is not None
        body = await request.read()
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body or None, headers=_fwd(request.headers)
        ) as r:
            data = await r.read()
            return web.Response(body=data, status=r.status, headers=_fwd(r.headers))

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


def _fwd(headers: object) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _HOP}  # type: ignore[attr-defined]
