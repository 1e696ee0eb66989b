"""The rate-limit window shared in Redis: serve/state/limits.py's semantics, held across replicas."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_engine import Clock, new_endpoint

from handler_sdk.errors import TooManyRequests
from handler_sdk.serve.state.limits import Limit, RateLimiter
from handler_sdk.serve.state.redis_client import connect
from handler_sdk.serve.state.redis_limits import RedisRateLimiter


async def test_the_window_is_shared_by_two_replicas(redis_url: str) -> None:
    clock = Clock(0)
    limits = {"run": Limit(3, window_s=10)}
    c1, c2 = connect(redis_url), connect(redis_url)
    ep = new_endpoint()
    a, b = RedisRateLimiter(c1, ep, limits, clock=clock), RedisRateLimiter(c2, ep, limits, clock=clock)
    try:
        await a.acquire("run")
        clock.advance(4_000)
        await b.acquire("run")
        await a.acquire("run")
        clock.advance(1_000)
        with pytest.raises(TooManyRequests) as e:
            await b.acquire("run")
        assert e.value.retry_after == 5  # the first stamp leaves the window 5 s from now
        clock.advance(5_000)
        await b.acquire("run")
        with pytest.raises(TooManyRequests):
            await a.acquire("run")
    finally:
        await c1.aclose()
        await c2.aclose()


async def test_the_in_flight_cap_is_per_replica_and_a_refusal_spends_no_window(redis_url: str) -> None:
    clock = Clock(0)
    limits = {"cancel": Limit(3, concurrent=1)}
    c1, c2 = connect(redis_url), connect(redis_url)
    ep = new_endpoint()
    a, b = RedisRateLimiter(c1, ep, limits, clock=clock), RedisRateLimiter(c2, ep, limits, clock=clock)
    try:
        assert await a.acquire("cancel") is True
        assert await b.acquire("cancel") is True  # the other replica's own cap
        for _ in range(3):
            with pytest.raises(TooManyRequests, match="concurrent"):
                await a.acquire("cancel")
        a.release("cancel")
        assert await a.acquire("cancel") is True  # the refusals above took no slot of the window
        assert await a.acquire("unknown-group") is False
    finally:
        await c1.aclose()
        await c2.aclose()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 12), st.booleans()), min_size=1, max_size=40))
async def test_decisions_equal_the_in_memory_limiter(redis_url: str, steps: list[tuple[int, bool]]) -> None:
    # Quarter seconds: exact in binary, so the in-memory limiter's float clock and ours agree at the boundary.
    t = [0]
    limits = {"status": Limit(4, window_s=2.5)}
    mem = RateLimiter(limits, clock=lambda: t[0] / 4)
    client = connect(redis_url)
    red = RedisRateLimiter(client, new_endpoint(), limits, clock=lambda: t[0] * 250)
    try:
        for quarters, ask in steps:
            t[0] += quarters
            if not ask:
                continue
            want: int | None = None
            try:
                mem.acquire("status")
            except TooManyRequests as e:
                want = e.retry_after
            try:
                await red.acquire("status")
                got = None
            except TooManyRequests as e:
                got = e.retry_after
            assert got == want
    finally:
        await client.aclose()
