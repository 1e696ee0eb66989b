"""Profiles for a missed target: py-spy samples a running process, and the summary says where the time goes.

The summary has three parts: on-CPU time by area (our serve code, our worker code, aiohttp, asyncio, ...), the
functions with the most self time, and our own functions with the most inclusive time. py-spy is optional
(``pip install py-spy``); without it the report says so instead.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["have_py_spy", "profile_command", "profile_pid", "summarize"]

_FRAME = re.compile(r"^(?P<fn>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")

# First match wins; paths are as py-spy prints them (relative to sys.path entries).
_AREAS = [
    ("handler_sdk/serve/", "handler_sdk.serve (endpoint)"),
    ("handler_sdk/worker/", "handler_sdk.worker (worker runtime)"),
    ("handler_sdk/", "handler_sdk (runner, chunker, codec, models...)"),
    ("aiohttp/", "aiohttp"),
    ("yarl/", "yarl / multidict"),
    ("multidict/", "yarl / multidict"),
    ("asyncio/", "asyncio event loop"),
    ("selectors.py", "asyncio event loop"),
    ("pydantic", "pydantic"),
    ("orjson", "orjson"),
    ("sqlite3", "sqlite3"),
    ("concurrent/futures", "threads (journal writer, pool)"),
    ("threading.py", "threads (journal writer, pool)"),
    ("logging/", "logging"),
    ("uuid.py", "uuid"),
]


def py_spy() -> str | None:
    exe = shutil.which("py-spy")
    if exe is None:
        local = Path(sys.executable).parent / "py-spy"
        exe = str(local) if local.exists() else None
    return exe


def have_py_spy() -> bool:
    return py_spy() is not None


def profile_pid(pid: int, seconds: float, out: Path, rate: int = 250) -> Path | None:
    """Sample process ``pid`` for ``seconds``; returns the collapsed-stack file, or None without py-spy."""
    exe = py_spy()
    if exe is None:
        return None
    cmd = [
        exe,
        "record",
        "--format",
        "raw",
        "-r",
        str(rate),
        "-d",
        str(max(1, round(seconds))),
        "-p",
        str(pid),
        "-o",
        str(out),
        "--nonblocking",
    ]
    subprocess.run(cmd, capture_output=True, check=False, timeout=seconds + 60)
    return out if out.exists() else None


def profile_command(cmd: Sequence[str], out: Path, rate: int = 250, cwd: Path | None = None) -> Path | None:
    """Run ``cmd`` under py-spy until it exits; returns the collapsed-stack file, or None without py-spy."""
    exe = py_spy()
    if exe is None:
        return None
    full = [exe, "record", "--format", "raw", "-r", str(rate), "-o", str(out), "--", *cmd]
    subprocess.run(full, capture_output=True, check=False, timeout=600, cwd=cwd)
    return out if out.exists() else None


def _parse(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame)
    if m is None:
        return frame, ""
    return m["fn"], m["file"]


def _area(path: str) -> str:
    for prefix, name in _AREAS:
        if prefix in path:
            return name
    return "other (interpreter, stdlib)"


def summarize(
    raw: Path | None, *, title: str, top: int = 12, ours: str = "handler_sdk/", within: str | None = None
) -> str:
    """A markdown summary of a py-spy collapsed-stack file. With ``within`` (a function name), only the samples
    taken inside that function count: a workload whose set-up (building its input, importing) would otherwise
    take a share of the profile that says nothing about the code measured."""
    if raw is None:
        return f"**Profile ({title})**: not taken (py-spy is not installed: `pip install py-spy`)."
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n_raw = line.rstrip().rpartition(" ")
        if not stack or not n_raw.isdigit():
            continue
        n = int(n_raw)
        frames = [_parse(f) for f in stack.split(";")]
        if within is not None and all(f != within for f, _ in frames):
            continue
        total += n
        fn, path = frames[-1]
        self_t[f"{fn} ({path})"] += n
        areas[_area(path)] += n
        # Entry points (``__main__`` modules) hold everything and say nothing.
        for key in {f"{f} ({p})" for f, p in frames if ours in p and not p.endswith("__main__.py")}:
            incl[key] += n
    if total == 0:
        where = "" if within is None else f" inside `{within}`"
        return f"**Profile ({title})**: py-spy collected no samples{where}."

    def pct(n: int) -> str:
        return f"{100 * n / total:.1f}%"

    lines = [
        f"**Profile ({title})**: py-spy, {total} on-CPU samples"
        + ("." if within is None else f" inside `{within}` (the rest, the workload's set-up, left out)."),
        "",
        "| where (self time) | share |",
        "|---|---|",
    ]
    lines += [f"| {a} | {pct(n)} |" for a, n in areas.most_common()]
    lines += ["", "| function with most self time | share |", "|---|---|"]
    lines += [f"| `{f}` | {pct(n)} |" for f, n in self_t.most_common(top)]
    if incl:
        lines += ["", f"| our function (`{ours}`), inclusive time | share |", "|---|---|"]
        lines += [f"| `{f}` | {pct(n)} |" for f, n in incl.most_common(top)]
    return "\n".join(lines)
