"""The no-op handler every dispatch benchmark runs: it returns its input.

Concurrency comes from ``BENCH_CONCURRENCY`` (default 100): enough that the handler is never what a benchmark
waits on, and above 1 so an HTTP worker takes its jobs in batches (job-take-batch).
"""

import os

from handler_sdk import handler


@handler(concurrency=int(os.environ.get("BENCH_CONCURRENCY", "100")))
async def noop(job):
    return job.input
