"""Benchmark 14: what the journal writes for a job with a big input or output, against writing it once.

A GPU job's input is often an image: 100 kB to a few MB of base64. Its row in the SQLite journal is written at
/run, again with its lease (a job that runs past the journal's linger, as a GPU job does), and again with its
result, and SQLite rewrites a whole row on every update: an input kept in the row is written three times.

This runs the lifecycle through Broker and JobStore in one process (submit, then durable; take, durable, which
writes the lease rows; done, durable), in batches of 20 jobs, for inputs of 100 kB and 1 MB. The yardstick is the
submits alone, in the same rounds: each input written once. Figures per job: the bytes the process handed the
kernel to write (``wchar`` in /proc/self/io: the WAL and its checkpoints into the database file alike) and the
time, and the ratio of each to the yardstick's.

Target (ours): a job's whole lifecycle writes at most 1.5 x what its input written once does.

A big output (an image, again) is written with its job's result. When the bound on retained jobs
(``--max-retained-mb``) moves the finished record out of memory, its row is updated once more, with its expiry, and
an output kept in the row was written again with it. The second part runs /run jobs with a 100 kB / 1 MB output
through submit, take and done, with a bound of 0 bytes (every record moved out as it finishes, as a full bound does
to the oldest), against the same jobs with the bound out of reach, in the same rounds: the yardstick writes each
output once.

Target (ours): a job moved out of memory writes at most 1.2 x what the same job kept in memory does.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import Figure, Run, Section, Target, ratios

__all__ = ["lifecycle", "output_lifecycle", "run"]

SIZES = (100_000, 1_000_000)
# This benchmark's lifecycle() run on the tree before the inputs table, the same day and machine.
BEFORE = (
    "Before (commit cbd31a4, every input in its job's row; measured 2026-12-05 with this benchmark's lifecycle, "
    "3 rounds): the lifecycle wrote 2.85 x (100 kB) and 3.10 x (1 MB) its submit's bytes, and took 1.78 x and "
    "1.97 x its time (0.92 and 10.4 ms a job)."
)
# output_lifecycle() run on the tree before the outputs table (every output in its job's row).
BEFORE_OUTPUTS = (
    "Before the outputs table (commit 928cbaa, every output in its job's row; measured 2026-12-07 with this "
    "benchmark's output_lifecycle, 2 rounds): a job moved out of memory wrote 1.61 x (100 kB) and 1.55 x (1 MB) "
    "what the same job kept in memory did (3.11 x and 3.12 x its output's bytes, against 1.94 x and 2.02 x)."
)
BATCH = 20
_NO_BOUND = 1 << 40


def _wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


async def _jobs(path: Path, inp: Any, output: bytes, n: int, *, run_them: bool, bound: int) -> tuple[float, float]:
    """(bytes written per job, seconds per job): ``n`` jobs submitted in batches, and, with ``run_them``, taken
    (their leases written: no linger, as for jobs that outlive it) and finished with ``output``."""
    from handler_sdk.models import JobStatus, RunRequest
    from handler_sdk.serve.state.broker import Broker
    from handler_sdk.serve.state.config import BrokerConfig
    from handler_sdk.serve.state.store import JobStore

    req = RunRequest.model_validate({"input": inp})
    store = JobStore(path, linger_s=0)
    broker = Broker(store, BrokerConfig(max_retained_bytes=bound))
    await broker.open()
    try:
        w0, t0 = _wchar(), time.perf_counter()
        for start in range(0, n, BATCH):
            k = min(BATCH, n - start)
            for _ in range(k):
                broker.submit(req)
            await broker.durable()
            if run_them:
                taken = await broker.take("bench", k)
                await broker.durable()
                for r in taken:
                    broker.done("bench", r.id, JobStatus.COMPLETED, output=output)
                await broker.durable()
                await broker.durable()  # the expiry of the records the bound moved out of memory meanwhile
        return (_wchar() - w0) / n, (time.perf_counter() - t0) / n
    finally:
        await store.close()


def output_lifecycle(work: Path, size: int, n: int, evicted: bool) -> tuple[float, float]:
    """(bytes written per job, seconds per job) for /run jobs with a ``size``-byte output, each moved out of memory
    by the retention bound as it finishes (a bound of 0, as a full bound does to the oldest), or
    (``evicted=False``) all kept in memory."""
    path = work / f"journal-out-{size}-{evicted}-{time.monotonic_ns()}.sqlite3"
    output = b'"' + b"x" * size + b'"'
    return asyncio.run(_jobs(path, {"prompt": "a cat"}, output, n, run_them=True, bound=0 if evicted else _NO_BOUND))


def lifecycle(work: Path, size: int, n: int, whole: bool) -> tuple[float, float]:
    """(bytes written per job, seconds per job) on a fresh journal: the whole lifecycle, or the submits alone."""
    path = work / f"journal-{size}-{whole}-{time.monotonic_ns()}.sqlite3"
    return asyncio.run(_jobs(path, {"image": "x" * size}, b'"ok"', n, run_them=whole, bound=_NO_BOUND))


def run(run: Run) -> Section:
    sec = Section("journal", "14. Journal: what a job with a big input or output writes")
    repeats = 1 if run.quick else 3
    jobs = {size: (10 if run.quick else max(40, 20_000_000 // size)) for size in SIZES}
    sec.params = {"bytes": list(SIZES), "jobs": list(jobs.values()), "batch": BATCH, "repeats": repeats}
    work = run.dir("journal")
    for size in SIZES:
        _paired(
            run, sec, repeats, f"{size // 1000:,} kB input", functools.partial(lifecycle, work, size, jobs[size]),
            ("whole lifecycle", "its submit alone"), "lifecycle / submit alone",
            "whole lifecycle / its submit alone", 1.5,
        )  # fmt: skip
    for size in SIZES:
        _paired(
            run, sec, repeats, f"{size // 1000:,} kB output",
            functools.partial(output_lifecycle, work, size, jobs[size]),
            ("moved out of memory", "kept in memory"), "moved out / kept",
            "moved out of memory by the bound / kept in memory", 1.2,
        )  # fmt: skip
    sec.notes.append(BEFORE)
    sec.notes.append(BEFORE_OUTPUTS)
    sec.notes.append(
        "Bytes are what the process passed to write() (the WAL, and the checkpoints that copy it into the database "
        "file), so a byte written once shows about twice. An input over 1,024 bytes is written once, to a table of "
        "its own (journal_rows.INLINE_INPUT); the lease and the result rewrite only the job's small row. A finished "
        "job's output over 4,096 bytes (journal_rows.INLINE_OUTPUT) likewise lives in a table of its own, so the "
        "expiry written as the bound moves the record out of memory rewrites only the small row."
    )
    sec.plot = _plot(run, sec)
    return sec


def _paired(
    run: Run,
    sec: Section,
    repeats: int,
    kb: str,
    measure: Callable[[bool], tuple[float, float]],
    names: tuple[str, str],
    short: str,
    target: str,
    bound: float,
) -> None:
    """``measure(True)`` against its yardstick ``measure(False)``, in rounds of alternating order: bytes and time per
    job of each, their ratios, and the target on the bytes' ratio."""
    got: dict[bool, tuple[list[float], list[float]]] = {True: ([], []), False: ([], [])}
    for r in range(repeats):
        for first in (True, False) if r % 2 == 0 else (False, True):
            b, t = measure(first)
            got[first][0].append(b)
            got[first][1].append(t * 1e3)
    (ours_b, ours_t), (yard_b, yard_t) = got[True], got[False]
    for name, (b_values, t_values) in zip(names, (got[True], got[False]), strict=True):
        sec.figure(f"{name}, {kb}: bytes written per job", "B").values = b_values
        sec.figure(f"{name}, {kb}: time per job", "ms").values = t_values
    sec.figure(f"ratio time, {short}, {kb}", "x").values = ratios(ours_t, yard_t)
    goal = Target(f"bytes written per job, {target}, {kb}", sec.figure(f"ratio bytes, {short}, {kb}", "x"), bound, "<=")
    goal.ratio.values = ratios(ours_b, yard_b)
    sec.targets.append(goal)
    run.log(f"journal {kb}: {names[0]} {ours_b[-1]:,.0f} B/job, {names[1]} {yard_b[-1]:,.0f} B/job")


def _plot(run: Run, sec: Section) -> str | None:
    from .report import bar_plot

    panels: list[tuple[str, list[str], dict[str, list[Figure | None]]]] = []
    for kind, labels in (
        ("input", ("whole lifecycle", "its submit alone")),
        ("output", ("moved out of memory", "kept in memory")),
    ):
        groups = [f"{size // 1000:,} kB {kind}" for size in SIZES]
        series: dict[str, list[Figure | None]] = {
            label: [sec.figure(f"{label}, {g}: bytes written per job", "B") for g in groups] for label in labels
        }
        panels.append((f"big {kind}s: bytes per job", groups, series))
    return bar_plot(run, "journal", "Journal: bytes written per job", panels)
