"""``python -m benchmarks [NAME ...] [--quick] [--out DIR]``: run the benchmarks and write RESULTS.md and plots.

With no NAME every benchmark runs, in the order below (the drain benchmark reuses the bare server's rate from
the runsync one when both run). ``--quick`` uses tiny sizes and a fake token engine (no vLLM) so the whole
thing takes seconds: it checks that the code works, and its figures mean nothing; it writes to
``benchmarks/.runs/quick`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

from .common import BENCH_DIR, Run, Section
from .report import ORDER, save

MODULES = {
    "runsync": "benchmarks.runsync",
    "drain": "benchmarks.drain",
    "streaming": "benchmarks.streaming",
    "chunker": "benchmarks.chunker",
    "footprint": "benchmarks.footprint",
    "batching": "benchmarks.batching",
    "engine_death": "benchmarks.engine_death",
    "vllm_runsync": "benchmarks.vllm_runsync",
    "stream_cpu": "benchmarks.stream_cpu",
    "retention": "benchmarks.retention",
    "soak": "benchmarks.soak",
    "redis_state": "benchmarks.redis_state",
    "vllm_openai": "benchmarks.vllm_openai",
    "journal": "benchmarks.journal",
}
# Parts of a benchmark that run alone and update their figures in its section (not run by default).
PARTS = {"sqlite_paired": "benchmarks.sqlite_paired"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = ", ".join([*ORDER, *PARTS])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"any of {names} (default: all but the parts)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and no vLLM: a smoke test of the code")
    p.add_argument("--out", type=Path, default=None, help="where RESULTS.md, results.json and plots/ go")
    p.add_argument(
        "--loadgen",
        choices=["auto", "wrk", "async"],
        default="auto",
        help="load generator for /runsync (auto: wrk when installed)",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of a missed target")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in ORDER and n not in PARTS]
    if unknown:
        p.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join([*ORDER, *PARTS])}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n for n in [*ORDER, *PARTS] if n in args.names] if args.names else list(ORDER)
    out = args.out or (BENCH_DIR / ".runs" / "quick" if args.quick else BENCH_DIR)
    run = Run(out=out.resolve(), quick=args.quick, loadgen=args.loadgen, profile=not args.no_profile)
    if args.out is not None or args.quick:
        run.work = run.out / ".work"  # scratch beside the results, so two runs never share (and wipe) it
    run.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    sections: list[Section] = []
    failed = []
    for name in names:
        run.log(f"--- {name}")
        t0 = time.monotonic()
        load_before = os.getloadavg()[0]
        try:
            sec = importlib.import_module(MODULES.get(name) or PARTS[name]).run(run)
        except Exception as e:  # one broken benchmark must not cost the others their results
            traceback.print_exc()
            failed.append(name)
            sec = Section(name, f"{name} (failed)", available=False)
            sec.notes.append(f"the benchmark raised {type(e).__name__}: {e}")
        sec.seconds = time.monotonic() - t0
        load = max(load_before, os.getloadavg()[0])
        if load > 0.75 * (os.cpu_count() or 1):
            sec.notes.append(
                f"Taken under load: the 1-minute load average reached {load:.1f} on {os.cpu_count()} cores during this "
                "benchmark (other processes shared the machine). Absolute figures are low and noisy; the ratios pair "
                "runs within each round, and their [min, max] show the spread."
            )
        sections.append(sec)
        for t in sec.targets:
            verdict = "PASS" if t.passed else "MISS"
            run.log(f"{name}: {t.label} {t.op} {t.bound}: {t.ratio.median:.3f} {verdict}")
        save(run, sections)  # after each one, so an interrupted run keeps what it measured
    md = save(run, sections)
    run.log(f"wrote {md} in {time.monotonic() - started:.0f} s")
    if failed:
        run.log(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
