"""A typed client for an endpoint (serve, or anything speaking the same API): ``AsyncEndpoint`` and its sync
wrapper ``Endpoint``.

>>> from handler_sdk.client import Endpoint
>>> with Endpoint("http://127.0.0.1:8000/v2", "local") as ep:  # doctest: +SKIP
...     job = ep.run({"prompt": "hi"})
...     print(ep.wait(job.id, timeout=60).output)

Replies are the pydantic models of ``handler_sdk.models``. A 429 is retried after its ``Retry-After``; a
connection error (or a 502/503/504) is retried with exponential backoff and jitter, for every call. ``run`` and
``runsync`` send an ``Idempotency-Key`` that stays the same across their retries, so a retry never makes a
second job on an endpoint that honours the header. Any other error reply raises the ``HTTPError`` of its status
(``NotFound``, ``Conflict``, ...); an endpoint still unreachable after the retries raises ``TransportError``.
"""

from __future__ import annotations

from .aio import AsyncEndpoint, RetryPolicy
from .sync import Endpoint

__all__ = ["AsyncEndpoint", "Endpoint", "RetryPolicy"]
