"""The worker's two standing polls: the heartbeat (ping) and job-stop, each on its own task."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from ..errors import TransportError
from .options import WorkerConfig
from .transport import Transport

__all__ = ["ping_loop", "stop_loop"]

log = logging.getLogger(__name__)


async def ping_loop(t: Transport, cfg: WorkerConfig, job_ids: Callable[[], list[str]],
                    initializing: Callable[[], bool]) -> None:  # fmt: skip
    while True:
        try:
            await t.ping(job_ids(), initializing=initializing())
        except Exception as e:  # a failed heartbeat is retried at the next one; it never stops the worker
            log.warning("ping failed: %s", e)
        await asyncio.sleep(cfg.ping_interval_s)


async def stop_loop(t: Transport, cfg: WorkerConfig, cancel: Callable[[str], bool]) -> None:
    delay = cfg.backoff_base_s
    while True:
        asked = asyncio.get_running_loop().time()
        try:
            ids = await t.stops()
        except TransportError as e:
            log.warning("job-stop poll failed (%s)", e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, cfg.backoff_max_s)
            continue
        if not ids and not t.direct and asyncio.get_running_loop().time() - asked < cfg.backoff_base_s:
            # Nothing, at once: a server that does not hold job-stop open. Re-asking at once would spin.
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, cfg.backoff_max_s, 1.0)
            continue
        delay = cfg.backoff_base_s
        for job_id in ids:
            cancel(job_id)
