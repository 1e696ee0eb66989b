"""The load generator, always a separate process: ``wrk`` when installed, else an async aiohttp client.

Both POST one fixed JSON body over ``connections`` keep-alive connections for ``duration`` seconds and report
requests/s and the p50/p99 latency. Given several URLs (the replicas of one endpoint), the connections are dealt
out over them in turn: one async client process holds them all, or one wrk runs per URL at the same time. wrk (C,
one thread) costs the server far less CPU than a Python client, which matters on a two-core machine; the fallback
exists so the code runs anywhere (the smoke test forces it).

``python -m benchmarks.loadgen URL --body JSON --connections N --duration S`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Load", "have_wrk", "run_load"]

# wrk's done() hook reports in microseconds; one JSON line is easier to read back than its text table.
_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = %s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p99_us":%%d,"errors":%%d,"status_errors":%%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    tool: str


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _wrk(url: str, body: str, connections: int, duration: float) -> Load:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_LUA % _lua_string(body))
        script = f.name
    try:
        secs = max(1, round(duration))
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{secs}s", "--timeout", "10s", "-s", script, url]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=secs + 60).stdout
    finally:
        Path(script).unlink(missing_ok=True)
    line = next(ln for ln in reversed(out.splitlines()) if ln.startswith("{"))
    d = json.loads(line)
    elapsed = d["duration_us"] / 1e6
    return Load(
        d["requests"] / elapsed,
        d["p50_us"] / 1000,
        d["p99_us"] / 1000,
        d["requests"],
        d["errors"] + d["status_errors"],
        "wrk",
    )


def _wrk_spread(urls: Sequence[str], body: str, connections: int, duration: float) -> Load:
    """One wrk per URL, all at once, the connections split between them."""
    shares = [connections // len(urls) + (i < connections % len(urls)) for i in range(len(urls))]
    with ThreadPoolExecutor(len(urls)) as pool:
        loads = list(pool.map(lambda uc: _wrk(uc[0], body, uc[1], duration), zip(urls, shares, strict=True)))
    n = sum(x.requests for x in loads)
    # The latencies of the parts are combined by their request counts: close to, not exactly, the percentiles.
    p50 = sum(x.p50_ms * x.requests for x in loads) / max(n, 1)
    return Load(sum(x.rps for x in loads), p50, max(x.p99_ms for x in loads), n, sum(x.errors for x in loads), "wrk")


def _async_client(urls: Sequence[str], body: str, connections: int, duration: float) -> Load:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        *urls,
        "--body",
        body,
        "--connections",
        str(connections),
        "--duration",
        str(duration),
    ]
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 120, cwd=root).stdout
    d = json.loads(out.strip().splitlines()[-1])
    return Load(d["rps"], d["p50_ms"], d["p99_ms"], d["requests"], d["errors"], "async-client")


def run_load(url: str | Sequence[str], body: str, connections: int, duration: float, tool: str = "auto") -> Load:
    """POST ``body`` to ``url`` (or over several, in turn) from a separate process; ``tool`` is ``wrk``, ``async``
    or ``auto``."""
    urls = [url] if isinstance(url, str) else list(url)
    if tool == "wrk" or (tool == "auto" and have_wrk()):
        return (
            _wrk(urls[0], body, connections, duration)
            if len(urls) == 1
            else _wrk_spread(urls, body, connections, duration)
        )
    return _async_client(urls, body, connections, duration)


# --- the fallback client, run as its own process ------------------------------------------------------------


async def _client(urls: Sequence[str], body: bytes, connections: int, duration: float) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json"}
    conn = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=conn) as s:
        start = time.perf_counter()
        deadline = start + duration

        async def one(url: str) -> None:
            nonlocal errors
            while (t0 := time.perf_counter()) < deadline:
                try:
                    async with s.post(url, data=body, headers=headers) as r:
                        await r.read()
                        ok = 200 <= r.status < 300
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await asyncio.gather(*(one(urls[i % len(urls)]) for i in range(connections)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(p / 100 * n))] * 1000 if n else float("nan")

    return {"rps": n / elapsed, "p50_ms": pct(50), "p99_ms": pct(99), "requests": n, "errors": errors}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    p.add_argument("url", nargs="+")
    p.add_argument("--body", required=True)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    a = p.parse_args(argv)
    res = asyncio.run(_client(a.url, a.body.encode(), a.connections, a.duration))
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
