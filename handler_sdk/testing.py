"""Run a handler in a test, exactly as serve runs it, with no server: ``result = run(my_handler, {"prompt": "hi"})``.

The job goes through the same pieces as ``python -m handler_sdk.serve``: an endpoint broker (no journal, no HTTP)
and the same ``Worker`` with its in-process transport, hence the same runner, thread pool, setup hook, start-up
checks, timeouts, cancel, chunking of stream items and error details. So ``result.status``, ``result.output``,
``result.error`` and ``result.stream`` are what /status and /stream would have said.

>>> from handler_sdk.testing import run
>>> def test_echo():  # doctest: +SKIP
...     result = run(echo, {"x": 1})
...     assert result.status == "COMPLETED" and result.output == {"x": 1}

``arun`` and ``astream`` are the same for async tests. ``stream(...)`` yields the stream items' outputs as the
handler produces them, and has the ``Result`` once it is exhausted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from . import codec
from .handler import Handler, handler
from .loopthread import LoopThread
from .models import ErrorDetails, JobReply, JobStatus, Policy, RunRequest, StreamItem
from .serve.inprocess import InProcessTransport
from .serve.state.broker import Broker, BrokerConfig
from .serve.state.record import JobRecord, wait_change
from .worker.loop import Worker, WorkerConfig

__all__ = ["Result", "Stream", "arun", "astream", "run", "stream"]

# The in-process worker's id in serve, so errorDetails.worker_id reads the same here.
_WORKER_ID = "local"


@dataclass(slots=True)
class Result:
    """How one job ended, as serve's /status and /stream report it."""

    id: str
    status: JobStatus
    output: Any = None
    error: str | None = None
    error_details: ErrorDetails | None = None
    # The outputs of the stream items, in order; ``stream_items`` has them with their metrics.
    stream: list[Any] = field(default_factory=list)
    stream_items: list[StreamItem] = field(default_factory=list)
    # Every progress update the endpoint received (a burst faster than they are sent coalesces: the latest wins).
    progress: list[Any] = field(default_factory=list)
    reply: JobReply | None = None

    @property
    def ok(self) -> bool:
        return self.status is JobStatus.COMPLETED


class _Recording(InProcessTransport):
    def __init__(self, broker: Broker) -> None:
        super().__init__(broker, _WORKER_ID, hold_s=1.0)
        self.progress_updates: dict[str, list[Any]] = {}

    async def progress(self, job_id: str, output: bytes) -> None:
        self.progress_updates.setdefault(job_id, []).append(codec.loads(output))
        await super().progress(job_id, output)


def _as_handler(h: Handler | Any) -> Handler:
    return h if isinstance(h, Handler) else handler(h)


class _Harness:
    """One endpoint broker and one worker on the current loop, for one job."""

    def __init__(self, h: Handler | Any) -> None:
        self.broker = Broker(None, BrokerConfig())
        self.transport = _Recording(self.broker)
        # drain 0: once the job has ended nothing of it is left to drain; an abandoned thread is not waited for.
        self.worker = Worker(_as_handler(h), self.transport, WorkerConfig(drain_timeout_s=0))
        self._tasks: list[asyncio.Task[None]] = []
        self._cancel: asyncio.TimerHandle | None = None

    async def start(self, input: Mapping[str, Any], timeout: float | None, cancel_after: float | None) -> JobRecord:
        self._tasks = [
            asyncio.create_task(self.broker.run_clock(), name="test-clock"),
            asyncio.create_task(self.worker.run(), name="test-worker"),
        ]
        policy = Policy() if timeout is None else Policy(executionTimeout=max(1, round(timeout * 1000)))
        r = self.broker.submit(RunRequest(input=dict(input), policy=policy))
        if cancel_after is not None:
            self._cancel = asyncio.get_running_loop().call_later(cancel_after, self.cancel, r.id)
        return r

    def cancel(self, job_id: str) -> None:
        """Cancel as /cancel does (a finished job keeps its status)."""
        self.broker.cancel(job_id)

    async def _until_changed(self, r: JobRecord) -> None:
        """Wait for news of the job, and surface a worker that died (a failing setup hook or check) at once."""
        worker = self._tasks[1]
        change = asyncio.ensure_future(wait_change(r, 1.0))
        await asyncio.wait({change, worker}, return_when=asyncio.FIRST_COMPLETED)
        change.cancel()
        if worker.done():
            worker.result()  # raises SetupError
            raise RuntimeError("the worker stopped before the job ended")

    async def items(self, r: JobRecord) -> AsyncIterator[StreamItem]:
        while True:
            _, raw = self.broker.read_stream(r.id)
            for b in raw:
                yield StreamItem.model_validate(codec.loads(b))
            if r.status.terminal:
                if not raw:
                    return
                continue
            if not raw:
                await self._until_changed(r)

    async def wait(self, r: JobRecord) -> None:
        while not r.status.terminal:
            await self._until_changed(r)

    def result(self, r: JobRecord) -> Result:
        reply = JobReply.model_validate(codec.loads(codec.dumps(r.reply())))
        _, raw = self.broker.read_stream(r.id, 0)
        items = [StreamItem.model_validate(codec.loads(b)) for b in raw]
        return Result(
            id=r.id, status=reply.status, output=reply.output, error=reply.error, error_details=reply.errorDetails,
            stream=[i.output for i in items], stream_items=items,
            progress=self.transport.progress_updates.get(r.id, []), reply=reply,
        )  # fmt: skip

    async def close(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()
        self.worker.stop()
        clock, worker = self._tasks
        clock.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await clock
        with contextlib.suppress(Exception):  # a SetupError was already raised to the caller
            await worker
        await self.transport.close()


async def arun(
    h: Handler | Any, input: Mapping[str, Any] | None = None, *, timeout: float | None = None,
    cancel_after: float | None = None,
) -> Result:  # fmt: skip
    """Run one job to its end and return its ``Result``.

    ``timeout`` is the job's ``policy.executionTimeout`` in seconds (the handler's own ``timeout`` applies too);
    ``cancel_after`` cancels the job that many seconds after it was submitted, as /cancel would. A failing setup
    hook or start-up check raises ``SetupError``, as it stops a worker.
    """
    harness = _Harness(h)
    try:
        r = await harness.start(input or {}, timeout, cancel_after)
        await harness.wait(r)
        return harness.result(r)
    finally:
        await harness.close()


def run(
    h: Handler | Any, input: Mapping[str, Any] | None = None, *, timeout: float | None = None,
    cancel_after: float | None = None,
) -> Result:  # fmt: skip
    """``arun`` for sync tests (on a loop of its own, so it also works where a loop already runs)."""
    lt = LoopThread("handler_sdk-testing")
    try:
        return lt.call(arun(h, input, timeout=timeout, cancel_after=cancel_after))
    finally:
        lt.close()


async def astream(
    h: Handler | Any, input: Mapping[str, Any] | None = None, *, timeout: float | None = None
) -> AsyncIterator[Any]:
    """The outputs of the job's stream items as the handler yields them; leaving the loop early cancels it."""
    harness = _Harness(h)
    r: JobRecord | None = None
    try:
        r = await harness.start(input or {}, timeout, None)
        async for item in harness.items(r):
            yield item.output
    finally:
        if r is not None:
            harness.cancel(r.id)
        await harness.close()


class Stream:
    """Returned by :func:`stream`: iterate for the outputs as they come; ``result`` once exhausted; ``cancel()``
    cancels the job as /cancel does (the iteration then ends, and ``result.status`` is CANCELLED)."""

    def __init__(self, h: Handler | Any, input: Mapping[str, Any], timeout: float | None) -> None:
        self.result: Result | None = None
        self._lt = LoopThread("handler_sdk-testing")
        self._harness = self._lt.call(self._make(h))
        self._r = self._lt.call(self._harness.start(input, timeout, None))
        self._closed = False

    @staticmethod
    async def _make(h: Handler | Any) -> _Harness:
        return _Harness(h)  # built on the loop thread: the worker binds to the loop it is made on

    async def _outputs(self) -> AsyncIterator[Any]:
        async for item in self._harness.items(self._r):
            yield item.output
        await self._harness.wait(self._r)
        self.result = self._harness.result(self._r)

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._lt.iterate(self._outputs())
        finally:
            self.close()

    def cancel(self) -> None:
        self._lt.loop.call_soon_threadsafe(self._harness.cancel, self._r.id)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.result is None:
            self.cancel()
        self._lt.call(self._harness.close())
        self._lt.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def stream(h: Handler | Any, input: Mapping[str, Any] | None = None, *, timeout: float | None = None) -> Stream:
    """Start a job and iterate over its stream items' outputs as they are yielded (see :class:`Stream`)."""
    return Stream(h, input or {}, timeout)
