"""``Endpoint``: the blocking face of ``AsyncEndpoint``, for scripts and sync tests."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from ..loopthread import LoopThread
from ..models import CancelReply, HealthReply, JobReply, Policy, PurgeReply, RunReply, StreamItem
from .aio import AsyncEndpoint, RetryPolicy

__all__ = ["Endpoint"]


class Endpoint:
    """The same operations as :class:`AsyncEndpoint`, blocking. The async client runs on a loop in a thread of
    its own, so this works from plain code and from inside another event loop alike."""

    def __init__(
        self,
        base_url: str,
        endpoint_id: str = "local",
        api_key: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        request_timeout_s: float = 30.0,
    ) -> None:
        self._lt = LoopThread("handler_sdk-client")
        self.aio = AsyncEndpoint(base_url, endpoint_id, api_key, retry=retry, request_timeout_s=request_timeout_s)

    @property
    def url(self) -> str:
        return self.aio.url

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._lt.call(self.aio.close())
        self._lt.close()

    def run(
        self,
        input: Mapping[str, Any],
        *,
        webhook: str | None = None,
        webhook_events: Sequence[str] | None = None,
        policy: Policy | Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> RunReply:
        coro = self.aio.run(
            input, webhook=webhook, webhook_events=webhook_events, policy=policy, idempotency_key=idempotency_key
        )
        return self._lt.call(coro)

    def runsync(
        self,
        input: Mapping[str, Any],
        *,
        wait_s: float | None = None,
        webhook: str | None = None,
        webhook_events: Sequence[str] | None = None,
        policy: Policy | Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> JobReply:
        coro = self.aio.runsync(
            input, wait_s=wait_s, webhook=webhook, webhook_events=webhook_events, policy=policy,
            idempotency_key=idempotency_key,
        )  # fmt: skip
        return self._lt.call(coro)

    def status(self, job_id: str) -> JobReply:
        return self._lt.call(self.aio.status(job_id))

    def wait(self, job_id: str, timeout: float | None = None) -> JobReply:
        return self._lt.call(self.aio.wait(job_id, timeout))

    def stream(self, job_id: str) -> Iterator[StreamItem]:
        return self._lt.iterate(self.aio.stream(job_id))

    def cancel(self, job_id: str) -> CancelReply:
        return self._lt.call(self.aio.cancel(job_id))

    def retry(self, job_id: str) -> RunReply:
        return self._lt.call(self.aio.retry(job_id))

    def purge_queue(self) -> PurgeReply:
        return self._lt.call(self.aio.purge_queue())

    def health(self) -> HealthReply:
        return self._lt.call(self.aio.health())
