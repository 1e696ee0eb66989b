"""Drives the real runpod-python SDK client against a base URL; run by the peer interpreter, not by pytest.

usage: runpod_client.py BASE_URL ENDPOINT_ID API_KEY SCENARIO PARAMS_JSON

Prints one JSON object (the scenario's observations) as the last line of stdout. Errors propagate: a traceback
and a non-zero exit are what the test reports.
"""

import asyncio
import json
import sys
import time

import aiohttp
import runpod


def _until_running(job, deadline_s=30.0):
    """The statuses seen while waiting for the job to start (IN_QUEUE..., IN_PROGRESS)."""
    seen = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        status = job.status()
        if not seen or seen[-1] != status:
            seen.append(status)
        if status != "IN_QUEUE":
            return seen
        time.sleep(0.05)
    raise AssertionError(f"job never left IN_QUEUE: {seen}")


def run_sync(ep, p):
    return {"output": ep.run_sync(p["input"], timeout=p.get("timeout", 60))}


def run_output(ep, p):
    job = ep.run(p["input"])
    first = job.status()
    output = job.output(timeout=p.get("timeout", 60))
    return {"id": job.job_id, "first_status": first, "output": output, "status": job.status()}


def stream(ep, p):
    job = ep.run(p["input"])
    items = []
    for item in job.stream():
        items.append(item)
        if len(items) > p.get("max_items", 100):
            break  # a server that repeats chunks would otherwise never end this loop
    return {"id": job.job_id, "items": items, "status": job.status()}


def cancel(ep, p):
    job = ep.run(p["input"])
    seen = _until_running(job)
    reply = job.cancel()
    return {"id": job.job_id, "seen": seen, "cancel": reply, "status": job.status(), "output": job.output(timeout=5)}


def health(ep, p):
    return {"health": ep.health()}


def purge(ep, p):
    return {"before": ep.health(), "purge": ep.purge_queue(), "after": ep.health()}


def unauthorized(ep, p):
    out = {}
    for name, call in (("run_sync", lambda: ep.run_sync({"x": 1}, timeout=10)), ("health", ep.health)):
        try:
            out[name] = {"returned": call()}
        except RuntimeError as e:
            out[name] = {"raised": type(e).__name__, "message": str(e)}
    return out


async def _asyncio_scenario(endpoint_id, p):
    async with aiohttp.ClientSession() as session:
        ep = runpod.AsyncioEndpoint(endpoint_id, session)
        job = await ep.run(p["input"])
        output = await job.output(timeout=p.get("timeout", 60))
        status = await job.status()
        streamed = await ep.run(p["stream_input"]) if "stream_input" in p else None
        items = [x async for x in streamed.stream()] if streamed is not None else None
        return {"id": job.job_id, "output": output, "status": status, "items": items, "health": await ep.health()}


SCENARIOS = {
    "run_sync": run_sync,
    "run_output": run_output,
    "stream": stream,
    "cancel": cancel,
    "health": health,
    "purge": purge,
    "unauthorized": unauthorized,
}


def main():
    base, endpoint_id, api_key, scenario, params = sys.argv[1:6]
    # Both are copied when an Endpoint is constructed, so they are set first.
    runpod.endpoint_url_base = base
    runpod.api_key = api_key
    p = json.loads(params)
    if scenario == "asyncio":
        result = asyncio.run(_asyncio_scenario(endpoint_id, p))
    else:
        result = SCENARIOS[scenario](runpod.Endpoint(endpoint_id), p)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
