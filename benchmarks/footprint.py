"""Benchmark 5: the worker's footprint without vLLM.

* **Ready**: from starting ``python -m handler_sdk.worker benchmarks/noop_handler.py`` to its first job-take
  request, as seen by a probe endpoint in this process (it holds each take 1 s and answers 204).
* **Idle RSS** of that worker process, 1.5 s after its first take.
* **Import time** of ``import handler_sdk`` against ``import aiohttp.web``, each in a fresh interpreter,
  alternating, timed inside the interpreter (start-up itself not counted).

For comparison (no target) the same probe times runpod-python 1.12's worker with the same no-op handler.

Targets: ready < 1 s, idle RSS < 80 MB, import <= 1.2 x aiohttp.web's.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from pathlib import Path

from aiohttp import web

from .common import PY, Proc, Run, Section, Target, free_port, peers_python, ratios, wait_until

__all__ = ["Probe", "run"]

HOLD_S = 1.0


class Probe:
    """A stand-in endpoint on a thread of its own: records when each worker's first take arrives."""

    def __init__(self) -> None:
        self.port = free_port()
        self.first_take: dict[str, float] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name="probe")
        self._thread.start()
        self._ready.wait(10)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/probe"

    def _app(self) -> web.Application:
        async def take(request: web.Request) -> web.Response:
            self.first_take.setdefault(request.match_info["worker_id"], time.monotonic())
            await asyncio.sleep(HOLD_S)
            return web.Response(status=204)

        async def stop(request: web.Request) -> web.Response:
            await asyncio.sleep(HOLD_S)
            return web.json_response({"jobsToStop": []})

        async def ok(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        app = web.Application()
        p = "/v2/probe"
        app.router.add_get(p + "/job-take/{worker_id}", take)
        app.router.add_get(p + "/job-take-batch/{worker_id}", take)
        app.router.add_get(p + "/job-stop/{worker_id}", stop)
        app.router.add_get(p + "/ping/{worker_id}", ok)
        app.router.add_post(p + "/{tail:.*}", ok)
        return app

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def _ours(probe: Probe, work: Path, i: int) -> Proc:
    wid = f"ours-{i}"
    env = {
        "HANDLER_SDK_ENDPOINT_URL": probe.base,
        "HANDLER_SDK_WORKER_ID": wid,
        "HANDLER_SDK_LOG_LEVEL": "WARNING",
        "HANDLER_SDK_SPOOL_DIR": str(work / f"spool-{i}"),
    }
    return Proc([PY, "-m", "handler_sdk.worker", "benchmarks/noop_handler.py"], env=env, log=work / f"{wid}.log")


def _runpod(peers: str, probe: Probe, work: Path, i: int) -> Proc:
    wid = f"runpod-{i}"
    b = probe.base
    env: dict[str, str | None] = {
        "RUNPOD_WEBHOOK_GET_JOB": f"{b}/job-take/$ID?gpu=bench",
        "RUNPOD_WEBHOOK_POST_OUTPUT": f"{b}/job-done/$RUNPOD_POD_ID/$ID?gpu=bench",
        "RUNPOD_WEBHOOK_POST_STREAM": f"{b}/job-stream/$RUNPOD_POD_ID/$ID?gpu=bench",
        "RUNPOD_WEBHOOK_PING": f"{b}/ping/$RUNPOD_POD_ID?gpu=bench",
        "RUNPOD_POD_ID": wid,
        "RUNPOD_AI_API_KEY": None,  # no key: no ping process
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        "RUNPOD_SKIP_GPU_CHECK": "true",
        "RUNPOD_LOG_LEVEL": "ERROR",
        "RUNPOD_ENDPOINT_ID": None,
    }
    return Proc([peers, "benchmarks/runpod_noop.py"], env=env, log=work / f"{wid}.log")


def _start_and_measure(probe: Probe, proc: Proc, wid: str) -> tuple[float, float]:
    """(seconds from spawn to first take, idle RSS in MB 1.5 s later), then stop the worker."""
    try:
        wait_until(lambda: wid in probe.first_take, 60, f"{wid} first take", proc, every=0.005)
        ready = probe.first_take[wid] - proc.started
        time.sleep(1.5)
        proc.check()
        return ready, proc.rss_mb()
    finally:
        proc.stop(5)


def _import_time(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    return float(out.strip())


def run(run: Run) -> Section:
    sec = Section("footprint", "5. Footprint (no vLLM): worker start-up, idle memory, import time")
    repeats = 1 if run.quick else 5
    import_repeats = 2 if run.quick else 9
    work = run.dir("footprint")
    peers = peers_python()
    sec.params = {
        "repeats": repeats,
        "import_repeats": import_repeats,
        "take_hold_s": HOLD_S,
        "handler": "benchmarks/noop_handler.py",
    }
    probe = Probe()
    ready, rss, rp_ready, rp_rss = [], [], [], []
    try:
        for i in range(repeats):
            r, m = _start_and_measure(probe, _ours(probe, work, i), f"ours-{i}")
            ready.append(r)
            rss.append(m)
            run.log(f"footprint: worker ready in {r:.3f} s, idle RSS {m:.1f} MB")
            if peers is not None:
                r, m = _start_and_measure(probe, _runpod(peers, probe, work, i), f"runpod-{i}")
                rp_ready.append(r)
                rp_rss.append(m)
                run.log(f"footprint: runpod worker ready in {r:.3f} s, idle RSS {m:.1f} MB")
    finally:
        probe.close()
    ours_imp, aio_imp, worker_imp = [], [], []
    for i in range(import_repeats):
        pair = [("handler_sdk", ours_imp), ("aiohttp.web", aio_imp)]
        for mod, out in pair if i % 2 == 0 else reversed(pair):
            out.append(_import_time(mod))
        worker_imp.append(_import_time("handler_sdk.worker"))
    run.log(f"footprint: import handler_sdk {min(ours_imp):.3f} s, aiohttp.web {min(aio_imp):.3f} s (best)")
    f_ready = sec.figure("worker start -> first take request", "s")
    f_ready.values = ready
    f_rss = sec.figure("worker idle RSS", "MB")
    f_rss.values = rss
    sec.figure("import handler_sdk", "s").values = ours_imp
    sec.figure("import aiohttp.web", "s").values = aio_imp
    sec.figure("import handler_sdk.worker (for reference)", "s").values = worker_imp
    if peers is not None:
        sec.figure("runpod-python 1.12 worker start -> first take (for reference)", "s").values = rp_ready
        sec.figure("runpod-python 1.12 worker idle RSS (for reference)", "MB").values = rp_rss
    else:
        sec.notes.append("runpod-python 1.12 is not available: its reference figures are missing.")
    sec.targets.append(Target("worker ready (s)", f_ready, 1.0, "<"))
    sec.targets.append(Target("idle RSS (MB)", f_rss, 80.0, "<"))
    t = Target(
        "import handler_sdk / import aiohttp.web", sec.figure("ratio import handler_sdk / aiohttp.web", "x"), 1.2, "<="
    )
    t.ratio.values = ratios(ours_imp, aio_imp)
    sec.targets.append(t)
    sec.notes.append("RSS is the worker process's own VmRSS (MB = 10^6 bytes); the handler's thread pool is idle.")
    if run.profile and not sec.targets[2].passed:
        sec.profile = _import_profile()
    sec.plot = _plot(run, sec, peers is not None)
    return sec


def _import_profile() -> str:
    """The heaviest imports under ``import handler_sdk`` (python -X importtime, cumulative)."""
    out = subprocess.run(
        [PY, "-X", "importtime", "-c", "import handler_sdk"], capture_output=True, text=True, check=True
    ).stderr
    rows = []
    for line in out.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = line.split(":", 1)[1].split("|")
        rows.append((int(cum_us), int(self_us), name.strip()))
    rows.sort(reverse=True)
    lines = [
        "**Profile (import handler_sdk)**: `python -X importtime`, heaviest modules by cumulative time.",
        "",
        "| module | cumulative | self |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | {cum / 1000:.1f} ms | {self_ / 1000:.1f} ms |" for cum, self_, name in rows[:15]]
    return "\n".join(lines)


def _plot(run: Run, sec: Section, with_runpod: bool) -> str | None:
    from .report import bar_plot

    ready = {"handler_sdk worker": [sec.figure("worker start -> first take request", "s")]}
    rss = {"handler_sdk worker": [sec.figure("worker idle RSS", "MB")]}
    if with_runpod:
        ready["runpod-python 1.12 worker"] = [
            sec.figure("runpod-python 1.12 worker start -> first take (for reference)", "s")
        ]
        rss["runpod-python 1.12 worker"] = [sec.figure("runpod-python 1.12 worker idle RSS (for reference)", "MB")]
    imports = {
        "import handler_sdk": [sec.figure("import handler_sdk", "s")],
        "import aiohttp.web": [sec.figure("import aiohttp.web", "s")],
    }
    return bar_plot(
        run,
        "footprint",
        "Worker footprint (no vLLM)",
        [("seconds", ["start -> first take"], ready), ("MB", ["idle RSS"], rss), ("seconds", ["import time"], imports)],
    )
