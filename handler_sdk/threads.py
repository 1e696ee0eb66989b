"""An elastic thread pool for sync handlers.

A Python thread cannot be killed, so a cancelled or timed-out sync handler keeps its thread until it returns.
A fixed-size pool would then starve later jobs. This pool never queues work behind a busy thread: when no thread
is idle it starts one, so the number of threads is (jobs running) + (abandoned threads still finishing), and
idle threads exit after ``idle_timeout``. ``abandoned`` counts the threads still busy on a job the runtime has
already given up on; the worker logs a warning when it grows past ``warn_abandoned``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["ElasticPool"]

T = TypeVar("T")
log = logging.getLogger(__name__)

_STOP = object()


class ElasticPool:
    def __init__(self, *, idle_timeout: float = 60.0, warn_abandoned: int = 16, name: str = "handler") -> None:
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle = 0
        self._threads = 0
        self._lock = threading.Lock()
        self._idle_timeout = idle_timeout
        self._warn_abandoned = warn_abandoned
        self._name = name
        self.abandoned = 0
        # Bumped by shutdown: threads busy at that moment exit when their item returns instead of idling on.
        self._generation = 0

    @property
    def threads(self) -> int:
        return self._threads

    def _worker(self) -> None:
        generation = self._generation
        while True:
            try:
                item = self._work.get(timeout=self._idle_timeout)
            except queue.Empty:
                with self._lock:
                    # _idle counts waiting threads no queued item has claimed; with none left, an item put
                    # just now is counting on this thread.
                    if self._idle > 0:
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue
            if item is _STOP:
                with self._lock:
                    self._threads -= 1
                return
            item()
            with self._lock:
                if generation != self._generation:  # shut down while busy: the STOPs went to idle threads only
                    self._threads -= 1
                    return
                self._idle += 1

    def _submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if spawn:
                self._threads += 1
            else:
                # Claim the idle thread now, not when it dequeues: otherwise a burst of submits all count on the
                # same idle thread and queue behind it.
                self._idle -= 1
        if spawn:
            threading.Thread(target=self._worker, name=f"{self._name}-{self._threads}", daemon=True).start()
        self._work.put(fn)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a pool thread and await its result. Cancelling the await abandons the thread's
        result; the thread itself runs on until ``fn`` returns."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        ctx = contextvars.copy_context()

        abandoned = finished = False

        def settle(ok: bool, value: Any) -> None:
            nonlocal finished
            finished = True
            if fut.done():  # cancelled earlier: the thread is done with the job we abandoned
                if abandoned:
                    with self._lock:
                        self.abandoned -= 1
                return
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

        def call() -> None:
            value: Any
            try:
                value = ctx.run(fn, *args)
                ok = True
            except BaseException as e:  # handed to the awaiting task, which decides what it means
                ok, value = False, e
            # A closed loop means nobody is waiting any more: the handler ran on past the runtime's end.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, ok, value)

        self._submit(call)
        try:
            return await fut
        except asyncio.CancelledError:
            # Not fut.done(): cancelling this task cancels fut too. Both this and settle run on the loop.
            if not finished:
                abandoned = True
                with self._lock:
                    self.abandoned += 1
                    n = self.abandoned
                if n >= self._warn_abandoned:
                    log.warning("%d sync handler threads are still running after their jobs ended", n)
            raise

    def shutdown(self) -> None:
        with self._lock:
            n, self._idle = self._idle, 0
            self._generation += 1
        for _ in range(n):
            self._work.put(_STOP)
