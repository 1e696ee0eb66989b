"""``AsyncEndpoint``: every client operation of the endpoint API, with retries, over one aiohttp session."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel

from .. import codec
from ..errors import (
    BadRequest,
    Conflict,
    HTTPError,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    TransportError,
    Unauthorized,
)
from ..models import CancelReply, HealthReply, JobReply, Policy, PurgeReply, RunReply, StreamItem, StreamReply

__all__ = ["AsyncEndpoint", "RetryPolicy"]

M = TypeVar("M", bound=BaseModel)

_KNOWN: dict[int, type[HTTPError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: TooManyRequests,
}
_OTHER: dict[int, type[HTTPError]] = {}
# A gateway in front of the endpoint says these while it restarts: worth another try, as a refused connection is.
_RETRY_STATUSES = frozenset({502, 503, 504})
# The server clamps ?wait= to its own range; these are its bounds (ClientLimits), so the client never asks less.
_MIN_WAIT_S = 1.0
_MAX_WAIT_S = 300.0


def _error_class(status: int) -> type[HTTPError]:
    """The HTTPError subclass for a status; statuses without a named class get one made once (e.g. ``HTTP422``)."""
    cls = _KNOWN.get(status) or _OTHER.get(status)
    if cls is None:
        cls = _OTHER[status] = type(f"HTTP{status}", (HTTPError,), {"status": status})
    return cls


def _message(status: int, data: bytes) -> str:
    try:
        body = codec.loads(data)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str | dict):
        err = body["error"]
        return err if isinstance(err, str) else str(err.get("message", err))  # OpenAI routes nest it
    return f"HTTP {status}: {data[:200].decode(errors='replace')}"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How calls are retried. ``attempts`` counts every try, the first included."""

    attempts: int = 6
    backoff_s: float = 0.25
    backoff_max_s: float = 10.0
    # A Retry-After longer than this is not waited for: the 429 is raised instead.
    max_retry_after_s: float = 60.0


class AsyncEndpoint:
    """A client for one endpoint: ``AsyncEndpoint("http://127.0.0.1:8000/v2", "local", api_key=...)``.

    ``base_url`` is what runpod calls ``endpoint_url_base`` (ending in ``/v2``). Pass ``session`` to share an
    aiohttp session (it is then not closed here). Use as ``async with`` or call ``close()``.
    """

    def __init__(
        self,
        base_url: str,
        endpoint_id: str = "local",
        api_key: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        retry: RetryPolicy | None = None,
        request_timeout_s: float = 30.0,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/{endpoint_id}"
        self.retry_policy = retry or RetryPolicy()
        self.request_timeout_s = request_timeout_s
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> AsyncEndpoint:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # --- the operations --------------------------------------------------------------------------------------

    async def run(
        self,
        input: Mapping[str, Any],
        *,
        webhook: str | None = None,
        webhook_events: Sequence[str] | None = None,
        policy: Policy | Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> RunReply:
        """Queue a job; returns ``{id, status}`` at once. ``webhook_events``: which events the webhook gets
        (``start``, ``progress``, ``output``, ``completed``; the endpoint's default is ``completed``)."""
        body = _request_body(input, webhook, webhook_events, policy)
        key = idempotency_key or str(uuid.uuid4())
        return await self._call(RunReply, "POST", "run", body, key=key)

    async def runsync(
        self,
        input: Mapping[str, Any],
        *,
        wait_s: float | None = None,
        webhook: str | None = None,
        webhook_events: Sequence[str] | None = None,
        policy: Policy | Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> JobReply:
        """Run a job and wait for it (up to ``wait_s``, the server's default 90 s when None). A job still running
        then comes back as ``{id, status}`` only: ``wait`` on its id for the rest."""
        body = _request_body(input, webhook, webhook_events, policy)
        key = idempotency_key or str(uuid.uuid4())
        params = None if wait_s is None else {"wait": str(int(wait_s * 1000))}
        hold = _MAX_WAIT_S if wait_s is None else min(max(wait_s, _MIN_WAIT_S), _MAX_WAIT_S)
        return await self._call(JobReply, "POST", "runsync", body, key=key, params=params, hold_s=hold)

    async def status(self, job_id: str) -> JobReply:
        return await self._call(JobReply, "GET", f"status/{job_id}")

    async def wait(self, job_id: str, timeout: float | None = None) -> JobReply:
        """The job once it is terminal (COMPLETED, FAILED, CANCELLED or TIMED_OUT), or as it stands when
        ``timeout`` seconds have passed (check ``reply.status.terminal``). ``timeout=0`` checks once;
        ``None`` waits as long as it takes. Long-polls status-sync, so waiting costs a request per 5 minutes."""
        if timeout is not None and timeout <= 0:
            return await self.status(job_id)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = _MAX_WAIT_S if deadline is None else min(deadline - loop.time(), _MAX_WAIT_S)
            if left < _MIN_WAIT_S:
                # The server holds status-sync at least a second: a shorter rest is slept here, then checked once.
                await asyncio.sleep(max(left, 0))
                return await self.status(job_id)
            params = {"wait": str(int(left * 1000))}
            reply = await self._call(JobReply, "GET", f"status-sync/{job_id}", params=params, hold_s=left)
            if reply.status.terminal or (deadline is not None and loop.time() >= deadline):
                return reply

    async def stream(self, job_id: str) -> AsyncIterator[StreamItem]:
        """Every stream item of the job, in order, as it arrives; ends when the job is terminal.

        Reads with ``?from=N`` (its own position) rather than the endpoint's shared cursor, so a retried request
        never skips items and two readers of one job each see all of them."""
        seen = 0
        while True:
            reply = await self._call(StreamReply, "GET", f"stream/{job_id}", params={"from": str(seen)}, hold_s=5)
            for item in reply.stream:
                seen += 1
                yield item
            if reply.status.terminal and not reply.stream:
                return

    async def cancel(self, job_id: str) -> CancelReply:
        """Cancel a queued or running job; a finished one keeps its status."""
        return await self._call(CancelReply, "POST", f"cancel/{job_id}")

    async def retry(self, job_id: str) -> RunReply:
        """Queue a FAILED or TIMED_OUT job again, same id and input (``Conflict`` for any other status)."""
        return await self._call(RunReply, "POST", f"retry/{job_id}")

    async def purge_queue(self) -> PurgeReply:
        return await self._call(PurgeReply, "POST", "purge-queue")

    async def health(self) -> HealthReply:
        return await self._call(HealthReply, "GET", "health")

    # --- transport -------------------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _call(
        self,
        model: type[M],
        method: str,
        op: str,
        body: Any = None,
        *,
        key: str | None = None,
        params: Mapping[str, str] | None = None,
        hold_s: float = 0.0,
    ) -> M:
        data = await self._request(method, op, body, key=key, params=params, hold_s=hold_s)
        # Parsed by orjson, not pydantic's JSON reader: that one stops at a nesting depth (about 200) that an output
        # serve accepted can exceed; validating the parsed value does not descend into ``output: Any``.
        return model.model_validate(codec.loads(data))

    async def _request(
        self,
        method: str,
        op: str,
        body: Any,
        *,
        key: str | None,
        params: Mapping[str, str] | None,
        hold_s: float,
    ) -> bytes:
        headers = self._headers if key is None else {**self._headers, "Idempotency-Key": key}
        payload = None if body is None else codec.dumps(body)
        # A held request (runsync, status-sync, stream) may rightly take its whole hold before answering.
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s + hold_s)
        p = self.retry_policy
        delay = p.backoff_s
        url = f"{self.url}/{op}"
        for attempt in range(1, p.attempts + 1):
            last = attempt == p.attempts
            try:
                async with self._http().request(
                    method, url, data=payload, headers=headers, params=params, timeout=timeout
                ) as resp:
                    data = await resp.read()
                    status, retry_after = resp.status, resp.headers.get("Retry-After")
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as e:
                if last:
                    raise TransportError(f"{method} {url}: no reply after {attempt} attempts: {e!r}") from e
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, p.backoff_max_s)
                continue
            if status < 400:
                return data
            if status == 429 and not last:
                wait = _retry_after(retry_after, delay)
                if wait <= p.max_retry_after_s:
                    await asyncio.sleep(wait)
                    delay = min(delay * 2, p.backoff_max_s)
                    continue
            if status in _RETRY_STATUSES and not last:
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, p.backoff_max_s)
                continue
            if status >= 500:
                raise TransportError(f"{method} {url}: HTTP {status}: {_message(status, data)}")
            ra = None if retry_after is None else _retry_after(retry_after, 0.0)
            raise _error_class(status)(_message(status, data), retry_after=ra)
        raise AssertionError("unreachable: the last attempt returns or raises")


def _retry_after(header: str | None, fallback: float) -> float:
    """Seconds from a Retry-After header (delta-seconds; an HTTP date or garbage falls back to our backoff)."""
    if header is not None:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
    return fallback


def _request_body(
    input: Mapping[str, Any],
    webhook: str | None,
    webhook_events: Sequence[str] | None,
    policy: Policy | Mapping[str, Any] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"input": dict(input)}
    if webhook is not None:
        body["webhook"] = webhook
    if webhook_events is not None:
        body["webhookEvents"] = list(webhook_events)
    if isinstance(policy, Policy):
        body["policy"] = policy.model_dump(by_alias=True, exclude_defaults=True)
    elif policy is not None:
        body["policy"] = dict(policy)
    return body
