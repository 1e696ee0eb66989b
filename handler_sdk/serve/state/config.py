"""The job state's settings, the same for both engines (``--store sqlite`` and ``--store redis://``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BrokerConfig"]


@dataclass(slots=True)
class BrokerConfig:
    run_retention_ms: int = 30 * 60 * 1000
    sync_retention_ms: int = 60 * 1000
    lease_ms: int = 30_000
    # A job whose worker vanished is handed out again until it has been tried this many times.
    max_attempts: int = 3
    # Server-side backstop for executionTimeout, on top of the worker's own enforcement.
    execution_grace_ms: int = 5_000
    tick_s: float = 0.05
    # Finished records past this many (estimated) bytes live only in the store until they expire (archive.py).
    max_retained_bytes: int = 1024 << 20
