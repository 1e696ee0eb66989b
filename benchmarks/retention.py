"""Benchmark 10: what one finished, retained job costs the endpoint in memory, at a million of them.

A /run job is kept 30 minutes after it ends (a /runsync one, a minute): at thousands of jobs a second that is
millions of finished records. Each kind runs in a fresh process that fills a Broker through its own API (submit,
take, done: what the HTTP routes call, minus the sockets) with N finished jobs, and reads its VmRSS before and
after, after a full collection: the growth over N is everything the process holds per record (its compact form
with the output, its id string, the jobs-dict slot, the retention FIFO's entry).

Kinds: a no-op /runsync job (input ``{"prompt":"hello","n":1}``, its echo as output; the input is dropped at the
end), the same as a /run job (input kept), and a /run job with a 1 KiB output. Goals: at most 250 B per /runsync
record, and 400 B plus its output per /run record (for the 1 KiB kind, the figure is net of the output's
1,024 bytes of JSON).
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
from pathlib import Path

from .common import PY, ROOT, Run, Section, Target

__all__ = ["run"]

BODY = b'{"input":{"prompt":"hello","n":1}}'
KINDS = {
    "runsync": "no-op /runsync job",
    "run": "no-op /run job",
    "run-1k": "/run job, 1 KiB output (net of it)",
}
OUTPUT_1K = 1024  # bytes of JSON: a 1,022-character string and its quotes
BATCH = 10_000


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def _fill(kind: str, n: int) -> dict[str, float]:
    from handler_sdk import codec
    from handler_sdk.models import JobStatus, RunRequest
    from handler_sdk.serve.state.broker import Broker, BrokerConfig
    from handler_sdk.serve.state.finished import Finished

    hour = 3_600_000  # nothing expires during the fill
    broker = Broker(None, BrokerConfig(run_retention_ms=hour, sync_retention_ms=hour))
    sync = kind == "runsync"

    async def one_batch(size: int) -> None:
        for _ in range(size):
            broker.submit(RunRequest.model_validate(codec.loads_request(BODY)), sync=sync)
        for r in await broker.take("bench-worker", size):
            # A fresh bytes object per job, as a parsed and re-encoded result is (a shared constant costs nothing).
            out = codec.dumps("x" * (OUTPUT_1K - 2) if kind == "run-1k" else r.input)
            broker.done("bench-worker", r.id, JobStatus.COMPLETED, output=out)

    # A first batch, kept, so that lazily built structures (the worker's entry, code paths, allocator arenas)
    # are in place before the baseline.
    await one_batch(BATCH)
    gc.collect()
    before = _rss()
    for start in range(0, n, BATCH):
        await one_batch(min(BATCH, n - start))
    gc.collect()
    after = _rss()
    assert len(broker.jobs) == n + BATCH and broker.counts[JobStatus.COMPLETED] == n + BATCH
    job_id, v = next(reversed(broker.jobs.items()))
    return {
        "n": n, "before": before, "after": after, "per_record": (after - before) / n,
        "record": sys.getsizeof(v), "id": sys.getsizeof(job_id), "compact": isinstance(v, Finished),
        "dict": sys.getsizeof(broker.jobs) / len(broker.jobs), "output": len(v.output or b""),
    }  # fmt: skip


def _measure(kind: str, n: int) -> dict[str, float]:
    """One kind in a fresh process (its own heap, nothing left over from the others)."""
    cmd = [PY, "-m", "benchmarks.retention", kind, str(n)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=1200)
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


def run(run: Run) -> Section:
    sec = Section("retention", "10. Memory per finished, retained job")
    n = 20_000 if run.quick else 1_000_000
    repeats = 1 if run.quick else 2
    sec.params = {
        "records": n,
        "repeats": repeats,
        "how": "Broker filled in-process through submit/take/done, fresh process per kind, VmRSS after gc",
        "input": BODY.decode(),
    }
    per: dict[str, list[float]] = {k: [] for k in KINDS}
    parts: dict[str, dict[str, float]] = {}
    for r in range(repeats):
        for kind in KINDS if r % 2 == 0 else reversed(list(KINDS)):
            m = _measure(kind, n)
            parts[kind] = m
            value = m["per_record"] - (OUTPUT_1K if kind == "run-1k" else 0)
            per[kind].append(value)
            grown = (m["after"] - m["before"]) / 1e6
            run.log(f"retention {kind}: {m['per_record']:.0f} B/record over {n:,} records ({grown:.0f} MB)")
    goals = {"runsync": 250.0, "run": 400.0, "run-1k": 400.0}
    for kind, label in KINDS.items():
        t = Target(
            f"bytes per finished record, {label}", sec.figure(f"RSS per record, {label}", "B"), goals[kind], "<="
        )
        t.ratio.values = per[kind]
        sec.targets.append(t)
    worst = max(sec.figure(f"RSS per record, {KINDS['run']}", "B").median, 0.0)
    sec.notes.append(
        f"At 5,000 jobs/s for 30 minutes (9 million /run records) the /run figure means "
        f"{worst * 9e6 / 1e9:.1f} GB of retained records, before their outputs."
    )
    sync = parts["runsync"]
    sec.notes.append(
        "Where a finished /runsync record's bytes go (sys.getsizeof, this Python, one record of the run): its "
        f"{'compact form (finished.py: one bytes object, header and output)' if sync['compact'] else 'JobRecord'} "
        f"{sync['record']:.0f} B, of which the output {sync['output']:.0f} B; its id string {sync['id']:.0f} B; the "
        f"jobs dict {sync['dict']:.0f} B per entry at this size (its load factor); the retention FIFO 8 B: "
        f"{sync['record'] + sync['id'] + sync['dict'] + 8:.0f} B, against {per['runsync'][-1]:.0f} B measured (the "
        "allocator rounds each object up to 16 B). Before the compact form: 617 B (the 29-slot JobRecord 264 B + "
        "16 B of collector header, three timestamp ints 96 B, the same id, output and dict slot)."
    )
    sec.notes.append(
        "With the SQLite store, --max-retained-mb (default 1024) bounds these bytes whatever the rate: past it the "
        "oldest finished records live only in the journal and are read back on /status (archive.py; benchmark 11 "
        "shows RSS flat with it). This benchmark fills a broker without a store, so nothing is evicted."
    )
    sec.plot = _plot(run, sec)
    return sec


def _plot(run: Run, sec: Section) -> str | None:
    from .report import bar_plot

    groups = list(KINDS.values())
    return bar_plot(
        run,
        "retention",
        "RSS per finished, retained record (1 million records)",
        [("bytes per record", groups, {"measured": [sec.figure(f"RSS per record, {g}", "B") for g in groups]})],
    )


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_fill(sys.argv[1], int(sys.argv[2])))))
