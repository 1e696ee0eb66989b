"""A runpod worker with a plain (non-generator) async handler; run by the peer interpreter.

The job input picks the behaviour, so one worker process covers several cases:
  {"mode": "echo", ...}                 returns the input and the job id
  {"mode": "raise", "why": str}         raises ValueError
  {"mode": "progress", "release": path} posts progress_update, then waits for the file ``release`` to exist
  {"mode": "racy_progress"}             posts progress_update and returns at once (the update races the result)
  {"mode": "block", "seconds": s}       blocks the worker's event loop (as every sync runpod handler does)
  {"mode": "sleep", "seconds": s}       sleeps without blocking (several run at once under PEER_CONCURRENCY)
  {"mode": "hang", "marker": path, "late": bool}
                                        waits until stopped; on the stop writes ``marker``, and with ``late``
                                        returns a result anyway (a late result the endpoint must refuse)

PEER_CONCURRENCY=N sets a ``concurrency_modifier`` returning N; above 1 the worker takes through job-take-batch.
"""

import asyncio
import os
import pathlib
import time

import runpod


async def _wait_for(path, limit_s=60.0):
    deadline = time.monotonic() + limit_s
    while not pathlib.Path(path).exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def handler(job):
    inp = job["input"]
    mode = inp.get("mode", "echo")
    if mode == "echo":
        return {"echo": inp, "id": job["id"]}
    if mode == "raise":
        raise ValueError(f"boom: {inp.get('why')}")
    if mode == "progress":
        runpod.serverless.progress_update(job, {"step": 1, "of": 2})
        await _wait_for(inp["release"])
        return {"step": 2, "of": 2}
    if mode == "racy_progress":
        runpod.serverless.progress_update(job, {"step": 1})
        return {"final": True}
    if mode == "sleep":
        await asyncio.sleep(inp["seconds"])
        return {"slept": inp["seconds"]}
    if mode == "block":
        time.sleep(inp["seconds"])
        return {"blocked": inp["seconds"]}
    if mode == "hang":
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pathlib.Path(inp["marker"]).write_text("stopped")
            if inp.get("late"):
                return {"late": True}
            raise
    raise ValueError(f"unknown mode {mode!r}")


CONCURRENCY = int(os.environ.get("PEER_CONCURRENCY", "1"))
runpod.serverless.start({"handler": handler, "concurrency_modifier": lambda current: CONCURRENCY})
