"""The Job a handler receives: attributes for new code, mapping access for runpod-style code."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["Job"]

_EVENT_LOCK = threading.Lock()


class Job(Mapping[str, Any]):
    """One job as the handler sees it.

    ``job.id`` and ``job.input`` (also ``job["id"]`` and ``job["input"]``, so code written for runpod's dict
    jobs runs unchanged). ``job.progress(...)`` publishes a progress update that /status shows as ``output``
    while the job runs. ``job.cancelled`` turns true when the job is cancelled or times out: a sync handler
    cannot be interrupted, so a long loop should check it and return early.
    """

    __slots__ = ("_cancel", "_cancelled", "_on_progress", "_raw", "id", "input", "state")

    def __init__(
        self,
        raw: Mapping[str, Any],
        *,
        input: Any = None,
        state: Any = None,
        on_progress: Callable[[Any], None] | None = None,
    ) -> None:
        self._raw = raw
        self.id: str = raw["id"]
        self.input: Any = raw.get("input") if input is None else input
        self.state: Any = state
        self._on_progress = on_progress
        # The Event is made only if a handler waits on it: most jobs never do, and it costs a lock and a condition.
        self._cancelled = False
        self._cancel: threading.Event | None = None

    # Mapping protocol over the job as it came from the queue.
    def __getitem__(self, key: str) -> Any:
        if key == "input":
            return self.input
        return self._raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"Job(id={self.id!r})"

    @property
    def trace(self) -> str | None:
        """The job's W3C ``traceparent`` (as the endpoint sent it in the job-take body), or None without one."""
        value = self._raw.get("traceparent")
        return value if isinstance(value, str) else None

    def progress(self, update: Any) -> None:
        """Publish a progress update; safe to call from a sync handler's thread. Updates coalesce: the latest
        one wins if several arrive faster than they are sent."""
        if self._on_progress is not None:
            self._on_progress(update)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` seconds until the job is cancelled; an interruptible ``sleep`` for sync code."""
        with _EVENT_LOCK:
            if self._cancel is None:
                self._cancel = threading.Event()
                if self._cancelled:
                    self._cancel.set()
        return self._cancel.wait(timeout)

    def _mark_cancelled(self) -> None:
        with _EVENT_LOCK:
            self._cancelled = True
            if self._cancel is not None:
                self._cancel.set()
