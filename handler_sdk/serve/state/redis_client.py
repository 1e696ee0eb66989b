"""How a replica talks to Redis: the client (its pool, its resends) and the key prefix of an endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["MAX_CONNECTIONS", "connect", "key_prefix"]

# Connections one replica opens to Redis at most (its pub/sub feed included).
MAX_CONNECTIONS = 64


def connect(url: str, **kw: Any) -> Redis:
    """An asyncio client for the engine: bytes in and out, and a command that meets a dropped connection (a
    Redis restart, a pooled connection gone stale) is sent again on a new one, for up to about 2 s.

    A resend can repeat a script whose reply was lost after it ran: a repeated submit answers "id taken", a
    repeated done answers a conflict (the result is recorded), a repeated take leases jobs nobody runs, which
    lapse back to the queue after lease_ms. None loses a job."""
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError as e:  # pragma: no cover - the extra is missing
        from ...errors import ConfigError

        raise ConfigError("the Redis store needs the redis extra: pip install 'handler-sdk[redis]'") from e
    kw.setdefault("retry", Retry(ExponentialBackoff(cap=0.5, base=0.05), 8))
    kw.setdefault("retry_on_error", [RedisConnectionError, RedisTimeoutError])
    # A bounded pool that makes a burst wait for a free connection (up to 10 s) instead of opening one per request
    # in flight: 400 concurrent /status-sync on one replica would otherwise ask Redis for 400 connections.
    kw.setdefault("max_connections", MAX_CONNECTIONS)
    kw.setdefault("timeout", 10)
    return aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(url, **kw))


def key_prefix(endpoint: str) -> str:
    if not endpoint or any(c in endpoint for c in "{}: "):
        raise ValueError(f"endpoint id {endpoint!r} must be non-empty, without braces, colons or spaces")
    return f"hsdk:{{{endpoint}}}:"
