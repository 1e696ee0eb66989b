"""The benchmark code still runs: ``python -m benchmarks --quick`` end to end, with tiny sizes.

Only the code is checked here, never speed: --quick uses a fake token engine instead of vLLM and the async-client
load generator instead of wrk (so wrk need not be installed), and writes into a temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is a top-level package beside tests/, not an installed one
    sys.path.insert(0, str(ROOT))

from benchmarks.report import ORDER  # noqa: E402

pytestmark = pytest.mark.timeout(330)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--loadgen", "async", "--no-profile", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=320,
        check=False,
    )
    return proc, out


def test_quick_run_of_every_benchmark_exits_cleanly(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_every_benchmark_reports_figures_and_targets(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = quick_run
    sections = json.loads((out / "results.json").read_text())["sections"]
    assert set(sections) == set(ORDER)
    for name, s in sections.items():
        assert s["available"], (name, s["notes"])
        assert s["targets"], name
        for f in s["figures"]:
            assert f["values"], (name, f["name"])
        for t in s["targets"]:
            assert t["ratio"]["values"], (name, t["label"])
        assert s["machine"]["cores"] >= 1


def test_results_md_has_a_section_a_verdict_and_a_plot_per_benchmark(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = quick_run
    md = (out / "RESULTS.md").read_text()
    assert "--no-rate-limits" in md and "200 requests/s" in md
    for title in ("1. /runsync", "2. Queue drain", "3. Token streaming", "4. Chunker", "5. Footprint"):
        assert f"## {title}" in md
    assert "**PASS**" in md or "**MISS**" in md
    for name in ORDER:
        png = out / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"plots/{name}.png" in md


def test_the_redis_benchmark_measures_every_replica_count_counts_round_trips_and_pairs_sqlite(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = quick_run
    s = json.loads((out / "results.json").read_text())["sections"]["redis_state"]
    names = {f["name"] for f in s["figures"]}
    for who in ("SQLite, 1 serve", "Redis, 1 replica", "Redis, 2 replicas", "Redis, 4 replicas"):
        assert f"/runsync at 32 conn, {who}: requests/s" in names
        assert f"drain, {who}: jobs/s" in names
        assert f"/runsync CPU per job: serve (all replicas), {who}" in names
    assert "drain CPU per job: redis-server, Redis, 4 replicas" in names
    labels = [t["label"] for t in s["targets"]]
    assert sum("round trips per /runsync job" in x for x in labels) == 3
    assert any(x.startswith("SQLite drain rate") and "0a938fa" in x for x in labels)
    md = (out / "RESULTS.md").read_text()
    assert "(`fcall:submit`)" in md and "(`fcall:take`)" in md  # the per-call breakdown
    assert "Projection to N machines" in md


def test_a_single_benchmark_run_keeps_the_other_sections(tmp_path: Path) -> None:
    """Rendering merges: re-running one benchmark replaces its section only."""
    from benchmarks.common import Figure, Run, Section, Target
    from benchmarks.report import save

    run = Run(out=tmp_path)
    first = Section("chunker", "4. Chunker")
    first.targets.append(Target("x", Figure("r", "x", [1.0, 0.5, 2.0]), 0.8))
    save(run, [first, Section("footprint", "5. Footprint", available=False, notes=["not run"])])
    again = Section("chunker", "4. Chunker")
    again.targets.append(Target("x", Figure("r", "x", [0.1]), 0.8))
    md = save(run, [again]).read_text()
    assert "## 5. Footprint" in md and "not run" in md
    assert "| chunker | x ≥ 0.800 | 0.100 | **MISS** |" in md
    assert "1.00 [0.500, 2.00]" not in md


def test_the_redis_counts_alone_replace_the_counted_figures_and_keep_the_rest(tmp_path: Path) -> None:
    """``BENCH_REDIS_ONLY=counts``: the counting runs again onto a full run's section (here the committed one)."""
    full = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    old = full["sections"]["redis_state"]
    counted = {f["name"] for f in old["figures"] if ", counted, " in f["name"]}
    for f in old["figures"]:
        if f["name"] in counted:
            f["values"] = [99.0]  # a value no counting run gives
    (tmp_path / "results.json").write_text(json.dumps({"sections": {"redis_state": old}}))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "redis_state", "--quick", "--no-profile", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "BENCH_REDIS_ONLY": "counts"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    new = json.loads((tmp_path / "results.json").read_text())["sections"]["redis_state"]
    assert [f["name"] for f in new["figures"]] == [f["name"] for f in old["figures"]]
    for a, b in zip(old["figures"], new["figures"], strict=True):
        if a["name"] in counted:
            assert b["values"] and b["values"] != [99.0], a["name"]
        else:
            assert b["values"] == a["values"], a["name"]
    assert [t["label"] for t in new["targets"]] == [t["label"] for t in old["targets"]]
    assert new["text"][1:] == old["text"][1:]  # the projection
    under = old["text"][0].index("**Under load**")
    assert new["text"][0].endswith(old["text"][0][under:]) and new["text"][0] != old["text"][0]
    assert sum("run again alone" in x for x in new["notes"]) == 1


def test_a_profile_within_one_function_leaves_the_workloads_set_up_out(tmp_path: Path) -> None:
    from benchmarks.profile import summarize

    raw = tmp_path / "raw.txt"
    raw.write_text(
        "<module> (x.py:1);make_items (benchmarks/chunker.py:40) 30\n"
        "<module> (x.py:1);pack_all (benchmarks/chunker.py:80);encode (handler_sdk/chunker.py:190) 60\n"
        "<module> (x.py:1);pack_all (benchmarks/chunker.py:80) 10\n"
    )
    whole = summarize(raw, title="t")
    inside = summarize(raw, title="t", within="pack_all")
    assert "100 on-CPU samples." in whole and "make_items" in whole
    assert "70 on-CPU samples inside `pack_all`" in inside and "make_items" not in inside
    assert "| `encode (handler_sdk/chunker.py)` | 85.7% |" in inside
    assert "no samples inside `nowhere`" in summarize(raw, title="t", within="nowhere")


def test_before_and_after_compares_a_loop_tagged_asyncio_target_with_its_untagged_before() -> None:
    from benchmarks.report import _before_after

    def target(label: str, value: float) -> dict[str, object]:
        ratio = {"name": label, "unit": "x", "values": [value], "median": value, "min": value, "max": value}
        return {"label": label, "passed": False, "ratio": ratio}

    now = {"runsync": {"targets": [target("ratio [uvloop]", 0.5), target("ratio [asyncio]", 0.4)]}}
    before = {"about": "x.", "sections": {"runsync": {"targets": [target("ratio", 0.3)]}}}
    rows = [line for line in _before_after(now, before) if line.startswith("| runsync")]
    assert rows == ["| runsync | ratio [asyncio] | 0.300 (MISS) | 0.400 (MISS) |"]
