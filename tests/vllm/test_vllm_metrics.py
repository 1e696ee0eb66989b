"""The stat logger's sliding window and snapshot, fed vLLM's own stats objects on a controlled clock."""

from __future__ import annotations

import pytest
from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import IterationStats, SchedulerStats

from handler_sdk.vllm import ENGINE_METRIC_FIELDS, EngineStats

pytestmark = pytest.mark.vllm


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def step(prompt: int = 0, gen: int = 0) -> IterationStats:
    stats = IterationStats()
    stats.prompt_token_stats.computed = prompt
    stats.num_generation_tokens = gen
    return stats


def sched(running: int = 1, waiting: int = 0, skipped: int = 0, kv: float = 0.25) -> SchedulerStats:
    return SchedulerStats(
        num_running_reqs=running, num_waiting_reqs=waiting, num_skipped_waiting_reqs=skipped, kv_cache_usage=kv
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def stats(clock: Clock) -> EngineStats:
    return EngineStats(window=5.0, clock=clock)


def test_a_fresh_engine_reports_zeros_for_every_field(stats: EngineStats) -> None:
    snap = stats.snapshot(0)
    assert set(snap) == set(ENGINE_METRIC_FIELDS)
    assert all(value == 0 for value in snap.values())


def test_queue_and_cache_figures_are_the_latest_scheduler_state(stats: EngineStats) -> None:
    stats.record(sched(running=3, waiting=2, skipped=1, kv=0.1), None)
    stats.record(sched(running=4, waiting=1, skipped=2, kv=0.4), None)
    snap = stats.snapshot(5)
    assert (snap["running"], snap["pending"], snap["gpu_kv_cache_usage"]) == (4, 3, 0.4)
    assert snap["cpu_kv_cache_usage"] == 0 and snap["swapped"] == 0


def test_throughput_is_tokens_over_the_busy_part_of_the_window(stats: EngineStats, clock: Clock) -> None:
    stats.record(None, step(prompt=100, gen=1))
    clock.now += 1.0
    stats.record(None, step(gen=20))
    clock.now += 1.0
    # Busy for 2 s: 100 prompt tokens and 21 generated tokens over 2 s, not over the whole 5 s window.
    snap = stats.snapshot(1)
    assert snap["avg_prompt_throughput"] == pytest.approx(50.0)
    assert snap["avg_gen_throughput"] == pytest.approx(10.5)


def test_old_steps_leave_the_window(stats: EngineStats, clock: Clock) -> None:
    stats.record(None, step(prompt=1000, gen=1000))
    clock.now += 3.0
    stats.record(None, step(gen=50))
    clock.now += 3.0  # the first step is now 6 s old, outside the 5 s window
    snap = stats.snapshot(1)
    assert snap["avg_prompt_throughput"] == 0
    assert snap["avg_gen_throughput"] == pytest.approx(50 / 5.0)


def test_an_idle_engine_ages_out_to_zero(stats: EngineStats, clock: Clock) -> None:
    stats.record(sched(running=2, kv=0.3), step(prompt=10, gen=10))
    clock.now += 6.0
    snap = stats.snapshot(None)
    assert snap["avg_gen_throughput"] == 0 and snap["avg_prompt_throughput"] == 0
    assert snap["running"] == 0 and snap["gpu_kv_cache_usage"] == 0


def test_no_unfinished_requests_means_nothing_runs_or_waits(stats: EngineStats) -> None:
    # The last step stats arrive for may still count a request that has since finished.
    stats.record(sched(running=1, waiting=1), None)
    snap = stats.snapshot(0)
    assert snap["running"] == 0 and snap["pending"] == 0


def test_the_logger_factory_makes_a_vllm_stat_logger_that_feeds_the_stats(stats: EngineStats) -> None:
    logger = stats.logger_factory(None, 0)  # type: ignore[arg-type]
    assert isinstance(logger, StatLoggerBase)
    logger.record(sched(running=7), step(gen=3))
    logger.log_engine_initialized()
    assert stats.snapshot(7)["running"] == 7
    assert stats.snapshot(7)["avg_gen_throughput"] > 0
