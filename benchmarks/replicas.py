"""Serve processes for the Redis benchmark: a redis-server, sets of serve replicas on it, and a code tree to run.

A replica is ``python -m benchmarks.rt_count`` (serve with its Redis round trips counted); a set of replicas is one
endpoint (its own endpoint id, so two sets on one redis-server share nothing, not even the change channel). A
``Tree`` is the code a process runs: this checkout, or an older commit's files (the SQLite before-and-after runs).
Every process is measured from outside: its CPU from /proc/PID/stat, its round trips from its own counts.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .common import PY, ROOT, Proc, Run, free_port, http_ok, stop_all, wait_until
from .drain import INPUT, _cpu_s, _preload, _span_ms, _total_cpu_s, _wait_drained, _WorkerCpu
from .profile import profile_pid

__all__ = ["Drained", "RedisServer", "Replicas", "Tree", "children_cpu_s", "drain", "serve_proc"]

NOOP = "benchmarks/noop_handler.py"
DRAIN_DB = 1  # the drains' database, flushed after each; the /runsync replicas use database 0


@dataclass(frozen=True)
class Tree:
    """The code a process runs: ``root`` is its working directory and first on its import path."""

    label: str
    root: Path = ROOT

    def env(self) -> dict[str, str | None]:
        return {"PYTHONPATH": str(self.root)}


NEW = Tree("new")


def children_cpu_s() -> float:
    """CPU seconds of this process's waited-for children (the load generator, once it has exited)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class RedisServer:
    """Our own redis-server on a free port, no persistence (tests/redis_server.py's settings)."""

    def __init__(self, work: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.dir = work / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--databases", "16"]  # fmt: skip
        self.proc = Proc(argv, log=self.dir / "redis.out")
        wait_until(lambda: self.cli("PING") == "PONG", 10, "redis-server ready", self.proc)

    @property
    def url(self) -> str:
        return self.url_db(0)

    def url_db(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cli(self, *args: str) -> str:
        exe = shutil.which("redis-cli") or "redis-cli"
        r = subprocess.run([exe, "-p", str(self.port), *args], capture_output=True, text=True, check=False)
        return r.stdout.strip()

    def stop(self) -> None:
        self.proc.stop(5)


def serve_proc(
    tree: Tree, work: Path, tag: str, *, target: str | None, extra: Sequence[str] = (), counted: bool = False
) -> tuple[Proc, str]:
    """One serve process of ``tree`` (rate limits off unless ``extra`` says otherwise); returns it and its base
    URL (``http://127.0.0.1:PORT/v2/ENDPOINT``)."""
    port = free_port()
    args = [*([target] if target else []), "--port", str(port), "--data-dir", str(work / f"data-{tag}"),
            "--log-level", "WARNING", *extra]  # fmt: skip
    endpoint = extra[list(extra).index("--endpoint-id") + 1] if "--endpoint-id" in extra else "local"
    env: dict[str, str | None] = {**tree.env(), "HANDLER_SDK_LOOP": "uvloop"}
    if counted:
        env["BENCH_RT_FILE"] = str(work / f"rt-{tag}.json")
        cmd = [PY, "-m", "benchmarks.rt_count", *args]
    else:
        cmd = [PY, "-m", "handler_sdk.serve", *args]
    return Proc(cmd, log=work / f"serve-{tag}.log", env=env, cwd=tree.root), f"http://127.0.0.1:{port}/v2/{endpoint}"


@dataclass
class Replicas:
    """``n`` serve replicas of one endpoint on one redis-server, each counting its round trips."""

    procs: list[Proc]
    bases: list[str]
    files: list[Path]

    @classmethod
    def start(
        cls,
        work: Path,
        redis_url: str,
        endpoint: str,
        n: int,
        *,
        target: str | None = NOOP,
        rate_limits: bool = False,
        extra: Sequence[str] = (),
    ) -> Replicas:
        procs, bases, files = [], [], []
        for i in range(n):
            args = ["--store", redis_url, "--endpoint-id", endpoint, "--replica-id", f"{endpoint}-{i}", *extra]
            if not rate_limits:
                args.append("--no-rate-limits")
            p, base = serve_proc(NEW, work, f"{endpoint}-{i}", target=target, extra=args, counted=True)
            procs.append(p)
            bases.append(base)
            files.append(work / f"rt-{endpoint}-{i}.json")
        self = cls(procs, bases, files)
        try:
            for p, base in zip(procs, bases, strict=True):
                wait_until(lambda b=base: http_ok(f"{b}/health"), 60, f"replica {base} ready", p)  # type: ignore[misc]
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def urls(self, route: str) -> list[str]:
        return [f"{b}/{route}" for b in self.bases]

    def counts(self) -> Counter[str]:
        """Every replica's round trips so far, by call, summed (each dumps them on SIGUSR1)."""
        total: Counter[str] = Counter()
        for p, f in zip(self.procs, self.files, strict=True):
            p.check()
            before = _read_counts(f)["seq"]  # every earlier signal's dump is in: each call waits for its own
            os.kill(p.pid, signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while (d := _read_counts(f))["seq"] <= before:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"replica {p.pid} did not write its round-trip counts")
                time.sleep(0.005)
            total.update(d["counts"])
        return total

    def stop(self) -> None:
        stop_all(self.procs, 10)


def _read_counts(path: Path) -> dict[str, Any]:
    try:
        d: dict[str, Any] = orjson.loads(path.read_bytes())
    except (OSError, ValueError):
        return {"seq": 0, "counts": {}}
    return d


def cpu_of(pids: Sequence[int]) -> list[float]:
    """CPU seconds so far of each process (NaN for one that is gone)."""
    out = []
    for pid in pids:
        t = _cpu_s(pid)
        out.append(float("nan") if t is None else t)
    return out


@dataclass
class Drained:
    """One drain: its rate, CPU µs per job per kind of process, and the round trips it made (Redis only)."""

    rate: float
    serve_us: float
    workers_us: float | None
    redis_us: float | None = None
    trips: Counter[str] = field(default_factory=Counter)


def drain(
    work: Path,
    tree: Tree,
    n: int,
    replicas: int,
    *,
    redis: RedisServer | None = None,
    tag: str,
    concurrency: int = 100,
    profile: Path | None = None,
) -> Drained:
    """Pre-load ``n`` jobs through /run (over every replica), then one ``handler_sdk.worker`` process per replica
    drains them over the HTTP worker protocol; the rate is read from the endpoint's own timestamps, as in
    benchmark 2. ``redis`` None: one SQLite serve of ``tree``; else ``replicas`` replicas on it. ``profile``: py-spy
    samples the first serve process for 3 s from the workers' start into this file (the figures then mean less)."""
    endpoint = f"drain{tag}"
    if redis is None:
        serve, base = serve_proc(tree, work, endpoint, target=None, extra=["--no-rate-limits"])
        reps = Replicas([serve], [base], [])
        wait_until(lambda: http_ok(f"{base}/health"), 60, "drain serve ready", serve)
    else:
        reps = Replicas.start(work, redis.url_db(DRAIN_DB), endpoint, replicas, target=None)
    workers: list[Proc] = []
    try:
        asyncio.run(_preload_all(reps.bases, n))
        trips0 = reps.counts() if redis is not None else Counter()
        serve0 = cpu_of(reps.pids)
        redis0 = _cpu_s(redis.pid) if redis is not None else None
        for i in range(replicas):
            env: dict[str, str | None] = {
                **tree.env(),
                "HANDLER_SDK_ENDPOINT_URL": reps.bases[i % len(reps.bases)],
                "HANDLER_SDK_WORKER_ID": f"{endpoint}-w{i}",
                "HANDLER_SDK_SPOOL_DIR": str(work / f"spool-{endpoint}-{i}"),
                "HANDLER_SDK_LOG_LEVEL": "WARNING",
                "BENCH_CONCURRENCY": str(concurrency),
                "HANDLER_SDK_LOOP": "uvloop",
            }
            workers.append(Proc([PY, "-m", "handler_sdk.worker", NOOP], env=env, cwd=tree.root,
                                log=work / f"worker-{endpoint}-{i}.log"))  # fmt: skip
        cpu = _WorkerCpu()
        spy = None
        if profile is not None:
            spy = threading.Thread(target=profile_pid, args=(reps.pids[0], 3, profile))
            spy.start()
        asyncio.run(_wait_drained(reps.bases[0], n, 600, workers, cpu))
        if spy is not None:
            spy.join()
        serve_s = sum(cpu_of(reps.pids)) - sum(serve0)
        redis_s = (_cpu_s(redis.pid) or 0.0) - redis0 if redis is not None and redis0 is not None else None
        trips = reps.counts() - trips0 if redis is not None else Counter()
        first, last = asyncio.run(_span_ms(reps.bases[0], n))
    finally:
        stop_all(workers, 1.0)
        reps.stop()
        if redis is not None:  # the next drain starts on an empty database, as a fresh SQLite journal does
            redis.cli("-n", str(DRAIN_DB), "FLUSHDB")
    return Drained(
        rate=n / max((last - first) / 1000, 1e-3),
        serve_us=serve_s / n * 1e6,
        workers_us=cpu.per_job_us(n),
        redis_us=None if redis_s is None else redis_s / n * 1e6,
        trips=trips,
    )


async def _preload_all(bases: Sequence[str], n: int) -> None:
    shares = [n // len(bases) + (i < n % len(bases)) for i in range(len(bases))]
    await asyncio.gather(*(_preload(b, k, 64 // len(bases)) for b, k in zip(bases, shares, strict=True) if k))


def old_tree(run: Run, commit: str) -> Tree:
    """``commit``'s files (``git archive``), extracted once per run; HANDLER_SDK_BENCH_BEFORE_TREE names a tree
    extracted already instead."""
    given = os.environ.get("HANDLER_SDK_BENCH_BEFORE_TREE")
    if given:
        return Tree(commit, Path(given).resolve())
    dest = run.work / f"tree-{commit}"
    if not (dest / "handler_sdk").is_dir():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return Tree(commit, dest)


def total_cpu(procs: Sequence[Proc]) -> float | None:
    return _total_cpu_s(list(procs))


__all__ += ["INPUT", "NEW", "NOOP", "cpu_of", "old_tree", "total_cpu"]
