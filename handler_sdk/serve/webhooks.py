"""Delivers a job's final JSON to its ``webhook`` URL by POST, retried with exponential backoff.

Delivery happens in the background and never delays the job; a webhook that keeps failing is logged and dropped
after ``attempts`` tries (the result stays readable on /status within retention).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from .. import codec
from .record import JobRecord

__all__ = ["Webhooks"]

log = logging.getLogger(__name__)


class Webhooks:
    def __init__(self, *, attempts: int = 6, backoff_s: float = 1.0, timeout_s: float = 10.0) -> None:
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0

    def on_terminal(self, r: JobRecord) -> None:
        if r.webhook is None:
            return
        body = codec.dumps(r.reply())  # snapshot now: the record may change (retry) while we retry
        t = asyncio.create_task(self._deliver(r.id, r.webhook, body), name=f"webhook-{r.id}")
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _deliver(self, job_id: str, url: str, body: bytes) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    if resp.status < 300:
                        self.delivered += 1
                        return
                    why = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                why = f"{type(e).__name__}: {e}"
            if attempt < self.attempts:
                log.warning("webhook for job %s failed (%s); retry %d in %.1fs", job_id, why, attempt, delay)
                await asyncio.sleep(delay)
                delay *= 2
            else:
                log.error("webhook for job %s dropped after %d attempts (%s)", job_id, attempt, why)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
