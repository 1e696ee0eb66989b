"""``python -m tests.faults``: every fault scenario, the long ones included, then their figures written into
docs/GUARANTEES.md (between its figure markers). Extra arguments go to pytest (e.g. ``-k outage``)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "GUARANTEES.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        figures, junit = Path(tmp) / "figures.jsonl", Path(tmp) / "junit.xml"
        env = {**os.environ, "HANDLER_SDK_FAULTS_LONG": "1", "HANDLER_SDK_FAULT_FIGURES": str(figures)}
        cmd = [sys.executable, "-m", "pytest", "tests/faults", "-p", "no:cacheprovider", "-q",
               f"--junitxml={junit}", *argv]  # fmt: skip
        rc = subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode
        rows = [json.loads(line) for line in figures.read_text().splitlines()] if figures.exists() else []
        results = _results(junit)
    _write(rows, results)
    print(f"figures written to {DOC.relative_to(ROOT)}")
    return rc


def _results(junit: Path) -> list[tuple[str, str, float]]:
    if not junit.exists():
        return []
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        out.append((name, outcome, float(case.get("time", 0))))
    return out


def _write(rows: list[dict[str, object]], results: list[tuple[str, str, float]]) -> None:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [START, "", f"Last run: {when}, {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
             f"Python {platform.python_version()}.", ""]  # fmt: skip
    passed = sum(1 for _, o, _ in results if o == "passed")
    lines += [f"{passed} of {len(results)} scenarios passed.", "", "| scenario | figures |", "|---|---|"]
    for row in rows:
        test = row.pop("test")
        figs = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in row.items())
        lines.append(f"| `{test}` | {figs} |")
    lines += ["", "| test | result | seconds |", "|---|---|---|"]
    lines += [f"| `{n}` | {o} | {t:.1f} |" for n, o, t in results]
    lines += ["", END]
    text = DOC.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(head + "\n".join(lines) + tail)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
