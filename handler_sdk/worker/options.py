"""The worker's settings and its lifecycle states (their own module, so that every part of the runtime reads them
without importing the Worker)."""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass, field
from pathlib import Path

from ..runner import DEFAULT_RESULT_CAP

__all__ = ["WorkerConfig", "WorkerState"]


class WorkerState(enum.Enum):
    INITIALIZING = "initializing"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(slots=True)
class WorkerConfig:
    ping_interval_s: float = 10.0
    drain_timeout_s: float = 30.0
    # Result delivery: retried with exponential backoff and jitter, then spooled to disk and re-sent.
    report_retries: int = 5
    backoff_base_s: float = 0.2
    backoff_max_s: float = 10.0
    # Takes back off to this at most: a worker must notice soon that an outage has ended (results may wait longer).
    take_backoff_max_s: float = 2.0
    spool_dir: Path | None = None
    spool_retry_s: float = 2.0
    result_cap: int = DEFAULT_RESULT_CAP
    progress_interval_s: float = 0.1
    hostname: str = field(default_factory=socket.gethostname)
