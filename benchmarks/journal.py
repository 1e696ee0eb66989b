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
import time
from pathlib import Path

from .common import Run, Section, Target, ratios

__all__ = ["lifecycle", "run"]

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


def _wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


async def _lifecycle(path: Path, size: int, n: int, whole: bool) -> tuple[float, float]:
    from handler_sdk.models import JobStatus, RunRequest
    from handler_sdk.serve.state.broker import Broker
    from handler_sdk.serve.state.store import JobStore

    req = RunRequest.model_validate({"input": {"image": "x" * size}})
    store = JobStore(path, linger_s=0)  # every lease written, as for a job that outlives the linger
    broker = Broker(store)
    await broker.open()
    try:
        w0, t0 = _wchar(), time.perf_counter()
        for start in range(0, n, BATCH):
            k = min(BATCH, n - start)
            for _ in range(k):
                broker.submit(req)
            await broker.durable()
            if whole:
                taken = await broker.take("bench", k)
                await broker.durable()
                for r in taken:
                    broker.done("bench", r.id, JobStatus.COMPLETED, output=b'"ok"')
                await broker.durable()
        return (_wchar() - w0) / n, (time.perf_counter() - t0) / n
    finally:
        await store.close()


async def _output_lifecycle(path: Path, size: int, n: int, evicted: bool) -> tuple[float, float]:
    from handler_sdk.models import JobStatus, RunRequest
    from handler_sdk.serve.state.broker import Broker
    from handler_sdk.serve.state.config import BrokerConfig
    from handler_sdk.serve.state.store import JobStore

    req = RunRequest.model_validate({"input": {"prompt": "a cat"}})
    output = b'"' + b"x" * size + b'"'
    store = JobStore(path, linger_s=0)
    # A bound of 0 moves every finished record out of memory at once, as a full bound does to the oldest.
    broker = Broker(store, BrokerConfig(max_retained_bytes=0 if evicted else 1 << 40))
    await broker.open()
    try:
        w0, t0 = _wchar(), time.perf_counter()
        for start in range(0, n, BATCH):
            k = min(BATCH, n - start)
            for _ in range(k):
                broker.submit(req)
            await broker.durable()
            taken = await broker.take("bench", k)
            for r in taken:
                broker.done("bench", r.id, JobStatus.COMPLETED, output=output)
            await broker.durable()
            await broker.durable()  # the expiry written for the records the bound moved out
        return (_wchar() - w0) / n, (time.perf_counter() - t0) / n
    finally:
        await store.close()


def output_lifecycle(work: Path, size: int, n: int, evicted: bool) -> tuple[float, float]:
    """(bytes written per job, seconds per job) for /run jobs with a ``size``-byte output, each moved out of memory
    by the retention bound as it finishes, or (``evicted=False``) all kept in memory."""
    path = work / f"journal-out-{size}-{evicted}-{time.monotonic_ns()}.sqlite3"
    return asyncio.run(_output_lifecycle(path, size, n, evicted))


def lifecycle(work: Path, size: int, n: int, whole: bool) -> tuple[float, float]:
    """(bytes written per job, seconds per job) on a fresh journal: the whole lifecycle, or the submits alone."""
    path = work / f"journal-{size}-{whole}-{time.monotonic_ns()}.sqlite3"
    return asyncio.run(_lifecycle(path, size, n, whole))


def run(run: Run) -> Section:
    sec = Section("journal", "14. Journal: what a job with a big input or output writes")
    repeats = 1 if run.quick else 3
    jobs = {size: (10 if run.quick else max(40, 20_000_000 // size)) for size in SIZES}
    sec.params = {"bytes": list(SIZES), "jobs": list(jobs.values()), "batch": BATCH, "repeats": repeats}
    work = run.dir("journal")
    for size in SIZES:
        whole_b, once_b, whole_t, once_t = [], [], [], []
        for r in range(repeats):
            for whole in (True, False) if r % 2 == 0 else (False, True):
                b, t = lifecycle(work, size, jobs[size], whole)
                (whole_b if whole else once_b).append(b)
                (whole_t if whole else once_t).append(t * 1e3)
        kb = f"{size // 1000:,} kB input"
        sec.figure(f"whole lifecycle, {kb}: bytes written per job", "B").values = whole_b
        sec.figure(f"its submit alone, {kb}: bytes written per job", "B").values = once_b
        sec.figure(f"whole lifecycle, {kb}: time per job", "ms").values = whole_t
        sec.figure(f"its submit alone, {kb}: time per job", "ms").values = once_t
        sec.figure(f"ratio time, lifecycle / submit alone, {kb}", "x").values = ratios(whole_t, once_t)
        t = Target(
            f"bytes written per job, whole lifecycle / its submit alone, {kb}",
            sec.figure(f"ratio bytes, lifecycle / submit alone, {kb}", "x"),
            1.5,
            "<=",
        )
        t.ratio.values = ratios(whole_b, once_b)
        sec.targets.append(t)
        run.log(f"journal {kb}: lifecycle {whole_b[-1]:,.0f} B/job, its submit alone {once_b[-1]:,.0f} B/job")
    for size in SIZES:
        out_b, kept_b, out_t, kept_t = [], [], [], []
        for r in range(repeats):
            for evicted in (True, False) if r % 2 == 0 else (False, True):
                b, t = output_lifecycle(work, size, jobs[size], evicted)
                (out_b if evicted else kept_b).append(b)
                (out_t if evicted else kept_t).append(t * 1e3)
        kb = f"{size // 1000:,} kB output"
        sec.figure(f"moved out of memory, {kb}: bytes written per job", "B").values = out_b
        sec.figure(f"kept in memory, {kb}: bytes written per job", "B").values = kept_b
        sec.figure(f"moved out of memory, {kb}: time per job", "ms").values = out_t
        sec.figure(f"kept in memory, {kb}: time per job", "ms").values = kept_t
        sec.figure(f"ratio time, moved out / kept, {kb}", "x").values = ratios(out_t, kept_t)
        t = Target(
            f"bytes written per job, moved out of memory by the bound / kept in memory, {kb}",
            sec.figure(f"ratio bytes, moved out / kept, {kb}", "x"),
            1.2,
            "<=",
        )
        t.ratio.values = ratios(out_b, kept_b)
        sec.targets.append(t)
        run.log(f"journal {kb}: moved out {out_b[-1]:,.0f} B/job, kept {kept_b[-1]:,.0f} B/job")
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


def _plot(run: Run, sec: Section) -> str | None:
    from .report import bar_plot

    panels = []
    for kind, labels in (
        ("input", ("whole lifecycle", "its submit alone")),
        ("output", ("moved out of memory", "kept in memory")),
    ):
        groups = [f"{size // 1000:,} kB {kind}" for size in SIZES]
        series = {label: [sec.figure(f"{label}, {g}: bytes written per job", "B") for g in groups] for label in labels}
        panels.append((f"big {kind}s: bytes per job", groups, dict(series)))
    return bar_plot(run, "journal", "Journal: bytes written per job", panels)
