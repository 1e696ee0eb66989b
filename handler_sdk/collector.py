"""Garbage-collector settings for our own long-running processes (``serve`` and ``worker``), never on import.

CPython's defaults (a young collection every 700 allocations) suit scripts. A serve process keeps every job's
record for its retention (a minute for /runsync, at thousands of jobs a second), and each full collection scans
them all: before this tuning, 60-100 ms pauses set the p99 of /runsync under load (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import gc

__all__ = ["after_setup", "tune_collector"]

# Young collections every 50,000 allocations, full ones a hundred times rarer than CPython's: cycles are still
# reclaimed, in far fewer, equally short passes.
THRESHOLDS = (50_000, 20, 100)


_tuned = False


def after_setup() -> None:
    """A handler's setup hook just ran (a model engine: millions of objects that live as long as the process).
    In a tuned process they are frozen too: unfrozen, each rare full collection scanned them all, and streams
    through the vLLM handler stalled for seconds (benchmark 3 at 16 streams)."""
    if _tuned:
        gc.freeze()


def tune_collector() -> None:
    """Call once start-up is done (handler imported): what exists now lives as long as the process, so it is
    collected once and then frozen out of every later scan."""
    global _tuned
    _tuned = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
