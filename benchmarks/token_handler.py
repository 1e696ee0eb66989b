"""A handler that streams 1-token items on an engine's clock, for the stream-CPU benchmark (benchmark 9).

Every job waits until ``start_at`` (wall clock), then on each engine step (every ``tick_s``) yields ``per_tick``
items, until it has yielded ``n``. All jobs advance together, as the streams of one vLLM engine do: its output
handler puts each step's outputs in every running request's collector at once, so every stream wakes in the same
event-loop iteration. ``clock`` is ``"engine"`` (that: one timer for the process, one wake-up per stream per step)
or ``"timers"`` (each job sleeps on a timer of its own, which spreads the wake-ups of one step over many
iterations of the event loop). ``shape`` is ``"vllm"`` (our vLLM handler's item: a dict with its token counts,
plus engine metrics) or ``"text"`` (a bare string).
"""

import asyncio
import os
import time

from handler_sdk import Chunk, handler

_METRICS = {"throughput_tps": 20000.0, "kv_cache_usage": 0.31, "running_requests": 32, "pending_requests": 0}


class _Engine:
    """Steps every ``tick_s`` from ``start_at``; ``step()`` is a future that the next step completes."""

    def __init__(self, start_at: float, tick_s: float) -> None:
        self.start_at, self.tick_s = start_at, tick_s
        self.waiting: list[asyncio.Future[None]] = []
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + max(0.0, self.start_at - time.time())
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due += self.tick_s
            woken, self.waiting = self.waiting, []
            if not woken:
                return
            for f in woken:
                if not f.done():
                    f.set_result(None)

    def step(self) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._run())
        return fut


_engines: dict[tuple[float, float], _Engine] = {}


@handler(concurrency=int(os.environ.get("BENCH_CONCURRENCY", "512")))
async def tokens(job):
    inp = job.input
    n, per_tick, tick = int(inp["n"]), int(inp["per_tick"]), float(inp["tick_s"])
    vllm = inp.get("shape", "vllm") == "vllm"
    engine = None
    if inp.get("clock", "engine") == "engine":
        key = (float(inp["start_at"]), tick)
        engine = _engines.get(key) or _engines.setdefault(key, _Engine(*key))
        await engine.step()
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, float(inp["start_at"]) - time.time()))
    due = loop.time()
    sent = 0
    while sent < n:
        for _ in range(min(per_tick, n - sent)):
            if vllm:
                out = {"text": " tok", "input_tokens": 0, "output_tokens": 1}
                yield Chunk(out, metrics={**_METRICS, "input_tokens": 0, "output_tokens": 1})
            else:
                yield " tok"
            sent += 1
        if engine is not None:
            await engine.step()
        else:
            due += tick
            await asyncio.sleep(max(0.0, due - loop.time()))
