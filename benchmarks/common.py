"""What every benchmark shares: processes it starts and stops, figures as median [min, max], targets as ratios.

Absolute numbers move from run to run on a shared machine; a ratio between two things measured in the same run,
in alternating rounds, does not move much. So every target here is a ratio: each round measures the thing and its
yardstick back to back, the ratio is taken per round, and the report gives the median ratio with its min and max.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
PY = sys.executable


def peers_python() -> str | None:
    """runpod-python 1.12's interpreter (its own venv: it cannot be installed beside vLLM), or None."""
    exe = os.environ.get("HANDLER_SDK_PEERS_PYTHON") or str(ROOT / ".venv-peers" / "bin" / "python")
    if not Path(exe).exists():
        return None
    probe = subprocess.run([exe, "-c", "import runpod"], capture_output=True, check=False)
    return exe if probe.returncode == 0 else None


def serve_cmd(target: str | None, port: int, data_dir: Path) -> list[str]:
    """Our endpoint as every benchmark runs it: rate limits off (they would measure the limiter), quiet logs."""
    cmd = [PY, "-m", "handler_sdk.serve", *([target] if target else []), "--port", str(port)]
    return [*cmd, "--no-rate-limits", "--data-dir", str(data_dir), "--log-level", "WARNING"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- figures -------------------------------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured quantity over the repeats of a run."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def lo(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def hi(self) -> float:
        return max(self.values) if self.values else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "values": self.values,
            "median": self.median,
            "min": self.lo,
            "max": self.hi,
        }


@dataclass
class Target:
    """``ratio`` (per round) compared with ``bound``: ``>=`` for a floor, ``<=`` or ``<`` for a ceiling. A target
    on an absolute figure (seconds, MB) puts that figure in ``ratio``."""

    label: str
    ratio: Figure
    bound: float
    op: str = ">="

    @property
    def passed(self) -> bool:
        m = self.ratio.median
        if m != m:  # NaN: nothing was measured
            return False
        if self.op == ">=":
            return m >= self.bound
        return m <= self.bound if self.op == "<=" else m < self.bound

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "ratio": self.ratio.as_dict(),
            "bound": self.bound,
            "op": self.op,
            "passed": self.passed,
        }


@dataclass
class Section:
    """Everything one benchmark reports: RESULTS.md renders one of these per benchmark."""

    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    profile: str | None = None
    plot: str | None = None
    # Markdown blocks (tables) rendered after the notes, for what a figure list cannot show (a breakdown).
    text: list[str] = field(default_factory=list)
    available: bool = True
    date: str = field(default_factory=lambda: datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    seconds: float = 0.0

    def figure(self, name: str, unit: str) -> Figure:
        for f in self.figures:
            if f.name == name:
                return f
        f = Figure(name, unit)
        self.figures.append(f)
        return f

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "date": self.date,
            "seconds": round(self.seconds, 1),
            "available": self.available,
            "params": self.params,
            "figures": [f.as_dict() for f in self.figures],
            "targets": [t.as_dict() for t in self.targets],
            "notes": self.notes,
            "profile": self.profile,
            "text": self.text,
            "plot": self.plot,
            "machine": machine(),
        }


def ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """Per-round ratios of two figures measured in the same rounds."""
    return [a / b if b else float("nan") for a, b in zip(num, den, strict=False)]


def fmt(x: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, without an exponent for everyday magnitudes."""
    if x != x:
        return "n/a"
    if x == 0:
        return "0"
    mag = abs(x)
    if mag >= 10 ** (digits - 1):
        return f"{x:,.0f}"
    decimals = digits - 1 - int(f"{mag:e}".split("e")[1])
    return f"{x:.{max(decimals, 0)}f}"


# --- the machine ---------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = float("nan")
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / (1 << 20)
                break
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


# --- processes -----------------------------------------------------------------------------------------------


class Proc:
    """A subprocess in its own process group (so its children go with it), its output in a log file."""

    def __init__(
        self, args: Sequence[str], *, log: Path, env: dict[str, str | None] | None = None, cwd: Path | None = None
    ) -> None:
        self.args = list(args)
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        merged: dict[str, str | None] = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env = {k: v for k, v in merged.items() if v is not None}  # None unsets a variable
        self.started = time.monotonic()
        with log.open("wb") as out:
            self.p = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=cwd or ROOT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def output(self, tail: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.args[:4]} exited with {self.p.returncode}:\n{self.output()}")

    def terminate(self) -> None:
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.p.pid, signal.SIGTERM)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the group, then SIGKILL after ``grace`` seconds."""
        if self.p.poll() is None:
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.p.wait(grace)
        # The leader may be gone while children it spawned (engine cores) linger in its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.p.wait(5)

    def rss_mb(self) -> float:
        """Resident memory of the process itself (not its children), in MB (10^6 bytes)."""
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
        return float("nan")


def stop_all(procs: Sequence[Proc], grace: float = 10.0) -> None:
    """Stop several processes at once: all get SIGTERM first, so their shutdowns overlap."""
    for p in procs:
        p.terminate()
    for p in procs:
        p.stop(grace)


def wait_until(
    cond: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None, every: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        if proc is not None:
            proc.check()
        if time.monotonic() > deadline:
            extra = f"\n{proc.output()}" if proc is not None else ""
            raise TimeoutError(f"{what} did not happen within {timeout:.0f}s{extra}")
        time.sleep(every)


def http_ok(url: str, body: bytes | None = None, timeout: float = 2.0) -> bool:
    """True once ``url`` answers 2xx (a POST when ``body`` is given)."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return bool(200 <= r.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def http_json(url: str, body: bytes | None = None, timeout: float = 10.0) -> Any:
    import orjson

    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return orjson.loads(r.read())


# --- a run ---------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Settings and shared state of one ``python -m benchmarks`` invocation."""

    out: Path
    quick: bool = False
    loadgen: str = "auto"  # auto | wrk | async
    profile: bool = True
    work: Path = field(default_factory=lambda: BENCH_DIR / ".runs")
    # Figures one benchmark measured that a later one compares against (e.g. the bare server's rate).
    shared: dict[str, Any] = field(default_factory=dict)

    def dir(self, name: str) -> Path:
        """A fresh scratch folder for one benchmark (logs, journals)."""
        d = self.work / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


__all__ = [
    "BENCH_DIR",
    "PY",
    "ROOT",
    "Figure",
    "Proc",
    "Run",
    "Section",
    "Target",
    "free_port",
    "http_json",
    "http_ok",
    "machine",
    "peers_python",
    "ratios",
    "stop_all",
    "wait_until",
]
