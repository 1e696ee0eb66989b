"""The broker's state as the wire shows it: /health's counts, /requests' rows, the dashboard's lists."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from ...models import JobStatus
from .finished import Finished, summary_of
from .leases import WorkerSeen
from .record import JobRecord

__all__ = ["health", "recent", "requests", "worker_rows"]

S = JobStatus


def health(counts: dict[JobStatus, int], retried: int, workers: Iterable[WorkerSeen]) -> dict[str, Any]:
    idle = running = init = 0
    for w in workers:
        if w.initializing:
            init += 1
        elif w.jobs:
            running += 1
        else:
            idle += 1
    return {
        "jobs": {
            "completed": counts[S.COMPLETED],
            "failed": counts[S.FAILED] + counts[S.TIMED_OUT],
            "inProgress": counts[S.IN_PROGRESS],
            "inQueue": counts[S.IN_QUEUE],
            "retried": retried,
        },
        "workers": {"idle": idle, "running": running, "initializing": init},
    }


def requests(
    jobs: dict[str, JobRecord | Finished], limit: int, offset: int, status: JobStatus | None = None
) -> dict[str, Any]:
    """A page of /requests, newest first."""
    rows = [(k, r) for k, r in reversed(jobs.items()) if status is None or r.status is status]
    return {
        "requests": [summary_of(k, r) for k, r in rows[offset : offset + limit]],
        "total": len(rows),
        "limit": limit,
        "offset": offset,
    }


def recent(jobs: dict[str, JobRecord | Finished], n: int) -> list[dict[str, Any]]:
    """The newest ``n`` jobs as /requests lists them, with their error."""
    rows = []
    for k, r in itertools.islice(reversed(jobs.items()), n):
        d = summary_of(k, r)
        if (error := r.error) is not None:
            d["error"] = error
        rows.append(d)
    return rows


def worker_rows(workers: Iterable[WorkerSeen]) -> list[dict[str, Any]]:
    """The workers seen, as the dashboard lists them."""
    return [
        {"id": w.id, "state": "initializing" if w.initializing else "running" if w.jobs else "idle",
         "jobs": sorted(w.jobs), "lastPing": w.last_seen}
        for w in workers
    ]  # fmt: skip
