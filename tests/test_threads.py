"""ElasticPool: hung sync handlers never starve later jobs, abandoned threads are counted, idle threads exit."""

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable

import pytest

from handler_sdk.threads import ElasticPool

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


async def poll(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition never became true")
        await asyncio.sleep(0.01)


async def test_run_returns_the_functions_result_from_another_thread() -> None:
    pool = ElasticPool(idle_timeout=1)
    assert await pool.run(lambda a, b: (a + b, threading.get_ident()), 2, 3) != (5, threading.get_ident())
    value, ident = await pool.run(lambda a, b: (a + b, threading.get_ident()), 2, 3)
    assert value == 5 and ident != threading.get_ident()


async def test_run_raises_the_functions_exception() -> None:
    def fail() -> None:
        raise ValueError("in thread")

    with pytest.raises(ValueError, match="in thread"):
        await ElasticPool(idle_timeout=1).run(fail)


async def test_run_carries_context_variables_into_the_thread() -> None:
    request_id.set("req-7")
    assert await ElasticPool(idle_timeout=1).run(request_id.get) == "req-7"


async def test_concurrent_jobs_each_get_a_thread_and_never_queue_behind_each_other() -> None:
    pool = ElasticPool(idle_timeout=1)
    barrier = threading.Barrier(4, timeout=10)
    # Four jobs that can only finish together: a pool that queued any of them would break the barrier.
    results = await asyncio.gather(*(pool.run(barrier.wait) for _ in range(4)))
    assert sorted(results) == [0, 1, 2, 3]
    assert pool.threads >= 4


async def test_sequential_jobs_reuse_idle_threads() -> None:
    pool = ElasticPool(idle_timeout=30)
    for i in range(50):
        assert await pool.run(lambda i=i: i) == i
    # A thread may still be on its way back to idle when the next job arrives, so at most one more is started.
    assert pool.threads <= 2
    pool.shutdown()


async def test_a_hung_abandoned_thread_does_not_starve_later_jobs() -> None:
    pool = ElasticPool(idle_timeout=1)
    release = threading.Event()
    started = threading.Event()

    def hang() -> str:
        started.set()
        release.wait(30)
        return "late"

    try:
        task = asyncio.create_task(pool.run(hang))
        await poll(started.is_set)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.abandoned == 1
        # The hung thread still holds its job; later jobs get threads of their own.
        for i in range(3):
            assert await asyncio.wait_for(pool.run(lambda i=i: i * 10), 10) == i * 10
        assert pool.abandoned == 1
        assert not release.is_set()
    finally:
        release.set()
    await poll(lambda: pool.abandoned == 0)


async def test_a_job_submitted_right_after_a_hung_one_gets_its_own_thread() -> None:
    pool = ElasticPool(idle_timeout=1)
    release = threading.Event()
    try:
        # Both submitted in one burst, before any thread has picked up the first.
        hung = asyncio.ensure_future(pool.run(release.wait, 30))
        quick = asyncio.ensure_future(pool.run(lambda: "quick"))
        assert await asyncio.wait_for(quick, 10) == "quick"
        assert not hung.done()
    finally:
        release.set()
    assert await hung is True


async def test_abandoned_count_goes_back_down_when_each_thread_finishes() -> None:
    pool = ElasticPool(idle_timeout=1)
    releases = [threading.Event() for _ in range(3)]
    started = [threading.Event() for _ in range(3)]

    def hang(i: int) -> int:
        started[i].set()
        releases[i].wait(30)
        return i

    try:
        tasks = [asyncio.create_task(pool.run(hang, i)) for i in range(3)]
        await poll(lambda: all(s.is_set() for s in started))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert pool.abandoned == 3
        releases[0].set()
        await poll(lambda: pool.abandoned == 2)
        releases[2].set()
        await poll(lambda: pool.abandoned == 1)
    finally:
        for r in releases:
            r.set()
    await poll(lambda: pool.abandoned == 0)


async def test_a_job_that_finished_before_the_cancel_is_not_counted_abandoned() -> None:
    pool = ElasticPool(idle_timeout=1)
    assert await pool.run(lambda: 1) == 1
    assert pool.abandoned == 0


async def test_idle_threads_exit_after_the_idle_timeout() -> None:
    pool = ElasticPool(idle_timeout=0.05)
    barrier = threading.Barrier(3, timeout=10)
    await asyncio.gather(*(pool.run(barrier.wait) for _ in range(3)))
    assert pool.threads >= 3
    await poll(lambda: pool.threads == 0)
    # And the pool still works after every thread has gone.
    assert await pool.run(lambda: "again") == "again"


async def test_shutdown_stops_the_idle_threads() -> None:
    pool = ElasticPool(idle_timeout=30)
    barrier = threading.Barrier(2, timeout=10)
    await asyncio.gather(*(pool.run(barrier.wait) for _ in range(2)))
    await poll(lambda: pool.threads >= 2)
    pool.shutdown()
    await poll(lambda: pool.threads == 0)


async def test_pool_threads_are_daemons_named_after_the_pool() -> None:
    pool = ElasticPool(idle_timeout=1, name="unitpool")
    t = await pool.run(threading.current_thread)
    assert t.daemon and t.name.startswith("unitpool-")


async def test_many_abandoned_threads_log_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    pool = ElasticPool(idle_timeout=1, warn_abandoned=2)
    release = threading.Event()
    try:
        tasks = [asyncio.create_task(pool.run(release.wait, 30)) for _ in range(2)]
        await poll(lambda: pool.threads >= 2)
        await asyncio.sleep(0.05)
        with caplog.at_level("WARNING", logger="handler_sdk.threads"):
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert "sync handler threads are still running after their jobs ended" in caplog.text
    finally:
        release.set()
    await poll(lambda: pool.abandoned == 0)
