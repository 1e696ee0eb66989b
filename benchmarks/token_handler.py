"""A handler that streams 1-token items on an engine's clock, for the stream-CPU benchmark (benchmark 9).

Every job waits until ``start_at`` (wall clock), then on each tick of ``tick_s`` yields ``per_tick`` items, until it
has yielded ``n``. All jobs tick together, as the streams of one vLLM engine advance together once per step.
``shape`` is ``"vllm"`` (our vLLM handler's item: a dict with its token counts, plus engine metrics) or ``"text"``
(a bare string).
"""

import asyncio
import os
import time

from handler_sdk import Chunk, handler

_METRICS = {"throughput_tps": 20000.0, "kv_cache_usage": 0.31, "running_requests": 32, "pending_requests": 0}


@handler(concurrency=int(os.environ.get("BENCH_CONCURRENCY", "512")))
async def tokens(job):
    inp = job.input
    n, per_tick, tick = int(inp["n"]), int(inp["per_tick"]), float(inp["tick_s"])
    vllm = inp.get("shape", "vllm") == "vllm"
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
        due += tick
        await asyncio.sleep(max(0.0, due - loop.time()))
