"""Engines on the test redis-server: a fake clock, and one engine per simulated replica."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from handler_sdk.serve.state.redis_client import connect
from handler_sdk.serve.state.redis_jobs import RedisJobs, RedisJobsConfig

_endpoints = itertools.count()


class Clock:
    """The injectable clock, in ms; the deadlines move only when a test moves it."""

    def __init__(self, t: int = 1_000_000) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t

    def advance(self, ms: int) -> None:
        self.t += ms


def new_endpoint() -> str:
    return f"ep{next(_endpoints)}"


@asynccontextmanager
async def replicas(
    url: str,
    n: int = 1,
    *,
    endpoint: str | None = None,
    clock: Callable[[], int] | None = None,
    connection_class: Any = None,
    **cfg: Any,
) -> AsyncIterator[list[RedisJobs]]:
    """``n`` engines on one endpoint, each with its own client (connections) like separate serve processes."""
    ep = endpoint or new_endpoint()
    config = RedisJobsConfig(**{"lease_ms": 1_000, "execution_grace_ms": 100, **cfg})
    engines: list[RedisJobs] = []
    try:
        for _ in range(n):
            kw = {} if connection_class is None else {"connection_class": connection_class}
            client = connect(url, **kw)
            e = RedisJobs(client, ep, config, clock=clock or Clock())
            await e.open()
            engines.append(e)
        yield engines
    finally:
        for e in engines:
            await e.close()
            await e.client.aclose()
