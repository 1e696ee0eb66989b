"""Engine-wide numbers for each stream item's metrics, taken from vLLM's own stat-logger hook.

vLLM calls ``record`` on every engine step with the scheduler's state and that step's token counts. We keep the
latest scheduler state and a sliding window of token counts, and read them whenever an item is emitted:

==========================  ==============================================================================
field                       source
==========================  ==============================================================================
running                     ``SchedulerStats.num_running_reqs``
pending                     ``num_waiting_reqs + num_skipped_waiting_reqs``
gpu_kv_cache_usage          ``SchedulerStats.kv_cache_usage``, 0 to 1 (on the CPU backend: the CPU KV pool)
cpu_kv_cache_usage          always 0: the V1 engine has no CPU swap space
swapped                     always 0: the V1 engine preempts by recomputing, it never swaps
avg_prompt_throughput       prompt tokens computed per second over the last ``window`` seconds
avg_gen_throughput          tokens generated per second over the last ``window`` seconds
==========================  ==============================================================================

Stats only arrive while the engine steps, so an idle engine would keep showing its last busy step: samples age
out of the window, and the caller passes the engine's unfinished-request count to zero the queue figures.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vllm.v1.metrics.loggers import StatLoggerBase

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.metrics.stats import IterationStats, MultiModalCacheStats, SchedulerStats

__all__ = ["ENGINE_METRIC_FIELDS", "EngineStats", "live_stats"]

ENGINE_METRIC_FIELDS = (
    "avg_gen_throughput",
    "avg_prompt_throughput",
    "cpu_kv_cache_usage",
    "gpu_kv_cache_usage",
    "pending",
    "running",
    "swapped",
)

# Below this span a rate is mostly noise (one step's tokens over a few microseconds).
_MIN_SPAN = 0.05


@dataclass(slots=True)
class _Step:
    at: float
    prompt_tokens: int
    gen_tokens: int


class EngineStats:
    """The sink our stat logger writes into; ``snapshot`` reads the engine-wide metrics fields.

    ``record`` and ``snapshot`` both run on the event loop (vLLM's output handler is a task there), so no lock.
    """

    def __init__(self, *, window: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._steps: deque[_Step] = deque()
        # When the current busy spell began: a window that is only partly filled divides by the busy time.
        self._busy_since = 0.0
        self._running = 0
        self._pending = 0
        self._kv_usage = 0.0
        self._scheduler_at = float("-inf")
        # Totals since start, for /metrics (handler_sdk.metrics reads every live EngineStats at each scrape).
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        _LIVE.add(self)

    def record(self, scheduler: SchedulerStats | None, iteration: IterationStats | None) -> None:
        now = self._clock()
        if scheduler is not None:
            self._running = scheduler.num_running_reqs
            self._pending = scheduler.num_waiting_reqs + scheduler.num_skipped_waiting_reqs
            self._kv_usage = float(scheduler.kv_cache_usage)
            self._scheduler_at = now
        if iteration is not None:
            prompt = iteration.prompt_token_stats.computed
            gen = iteration.num_generation_tokens
            self.prompt_tokens_total += prompt
            self.generation_tokens_total += gen
            if prompt or gen:
                self._prune(now)
                if not self._steps:
                    self._busy_since = now
                self._steps.append(_Step(now, prompt, gen))

    def _prune(self, now: float) -> None:
        cutoff = now - self.window
        while self._steps and self._steps[0].at < cutoff:
            self._steps.popleft()

    def throughput(self) -> tuple[float, float]:
        """(prompt tokens/s, generated tokens/s) over the window; 0 when the engine has been idle for it."""
        now = self._clock()
        self._prune(now)
        if not self._steps:
            return 0.0, 0.0
        span = max(now - max(now - self.window, self._busy_since), _MIN_SPAN)
        prompt = sum(s.prompt_tokens for s in self._steps)
        gen = sum(s.gen_tokens for s in self._steps)
        return prompt / span, gen / span

    def snapshot(self, unfinished: int | None = None) -> dict[str, Any]:
        """The engine-wide metrics fields. ``unfinished`` (the engine's unfinished-request count) overrides stale
        queue figures: with nothing unfinished nothing runs or waits, whatever the last step said."""
        prompt_tps, gen_tps = self.throughput()
        stale = self._clock() - self._scheduler_at > self.window
        idle = unfinished == 0 or stale
        return {
            "avg_gen_throughput": round(gen_tps, 3),
            "avg_prompt_throughput": round(prompt_tps, 3),
            "cpu_kv_cache_usage": 0,
            "gpu_kv_cache_usage": 0.0 if stale else self._kv_usage,
            "pending": 0 if idle else self._pending,
            "running": 0 if idle else self._running,
            "swapped": 0,
        }

    def logger_factory(self, vllm_config: VllmConfig, engine_index: int = 0) -> StatLoggerBase:
        """A vLLM ``StatLoggerFactory``: pass ``stat_loggers=[stats.logger_factory]`` to the engine."""
        return _Recorder(vllm_config, engine_index, sink=self)


_LIVE: weakref.WeakSet[EngineStats] = weakref.WeakSet()


def live_stats() -> list[EngineStats]:
    """Every EngineStats still in use in this process (one per engine)."""
    return list(_LIVE)


class _Recorder(StatLoggerBase):
    """Forwards each engine step to an EngineStats; logs nothing itself."""

    def __init__(self, vllm_config: VllmConfig, engine_index: int = 0, *, sink: EngineStats | None = None) -> None:
        self._sink = sink if sink is not None else EngineStats()

    def record(
        self,
        scheduler_stats: SchedulerStats | None,
        iteration_stats: IterationStats | None,
        mm_cache_stats: MultiModalCacheStats | None = None,
        engine_idx: int = 0,
    ) -> None:
        self._sink.record(scheduler_stats, iteration_stats)

    def log_engine_initialized(self) -> None:
        pass
