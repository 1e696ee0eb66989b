"""Result delivery: each job's result reaches the endpoint exactly once, or waits in the spool until it can.

A result is retried with exponential backoff and jitter, then spooled to disk (when the worker has a spool) and
re-sent from there, also by the next process after a restart. While a result is on its way (or spooled), its job
is still leased to this worker: it is named in pings and makes takes say ``job_in_progress=1``.
"""

from __future__ import annotations

import asyncio
import logging
import random

from ..errors import StaleResult, TransportError
from ..runner import Outcome
from .options import WorkerConfig
from .spool import Spool
from .transport import Transport

__all__ = ["Reporter"]

log = logging.getLogger(__name__)


class Reporter:
    def __init__(self, transport: Transport, config: WorkerConfig) -> None:
        self.t = transport
        self.cfg = config
        self.spool = Spool(config.spool_dir) if config.spool_dir is not None else None
        self.spooled: set[str] = set()
        # Jobs whose result is on its way: still leased to us, so still named in pings and takes.
        self.reporting: set[str] = set()

    def holding(self) -> bool:
        return bool(self.reporting or self.spooled)

    async def deliver(self, job_id: str, outcome: Outcome) -> None:
        """Report one result; never raises but CancelledError (one job's report must never take the worker, and
        every other job, down with it). If the worker is torn down meanwhile, the result is kept in the spool for
        the next start (not asyncio.shield: its task per job was a sixth of a no-op job's cost, and a shielded
        report still dies with the event loop, while the spool outlives the process). The in-process endpoint
        records the result before done() first suspends: a cancel there can't lose it, and nothing is kept."""
        self.reporting.add(job_id)
        try:
            await self.report(job_id, outcome)
        except asyncio.CancelledError:
            if not self.t.direct and not self._kept_at_exit(job_id, outcome):
                return  # (the spool failed: logged, as any other failed report)
            raise
        except Exception:
            log.exception("reporting the result of job %s failed", job_id)
        finally:
            self.reporting.discard(job_id)

    def _kept_at_exit(self, job_id: str, outcome: Outcome) -> bool:
        """A result the worker's teardown interrupted, spooled (or logged as lost); False if the spool failed."""
        if self.spool is None:
            log.error("result of job %s lost: the worker stopped before it was delivered", job_id)
            return True
        try:
            self._keep(job_id, outcome)
        except Exception:
            log.exception("reporting the result of job %s failed", job_id)
            return False
        log.warning("result of job %s spooled: the worker stopped before it was delivered", job_id)
        return True

    async def report(self, job_id: str, outcome: Outcome) -> None:
        while True:
            delay = self.cfg.backoff_base_s
            for attempt in range(self.cfg.report_retries + 1):
                try:
                    await self.t.done(job_id, outcome)
                    return
                except StaleResult as e:
                    log.warning("result of job %s refused by the endpoint: %s", job_id, e)
                    return
                except TransportError as e:
                    if attempt == self.cfg.report_retries:
                        break
                    log.warning("result of job %s not delivered (%s); retry in %.2fs", job_id, e, delay)
                    await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                    delay = min(delay * 2, self.cfg.backoff_max_s)
            if self.spool is not None:
                try:
                    self._keep(job_id, outcome)
                    return
                except OSError as e:  # a full disk: the result stays in memory and is retried
                    log.error("result of job %s could not be spooled (%s); still retrying", job_id, e)
            # No disk to fall back on: keep trying rather than drop a result.
            await asyncio.sleep(delay)

    def _keep(self, job_id: str, outcome: Outcome) -> None:
        """Put an undelivered result in the spool, for ``spool_loop`` (or the next start) to send."""
        assert self.spool is not None
        self.spool.save(job_id, outcome)
        self.spooled.add(job_id)

    async def spool_loop(self) -> None:
        assert self.spool is not None
        self.spooled.update(self.spool.ids())
        while True:
            try:
                await self._send_spooled()
            except Exception:  # an unreadable spool (or a full disk) is retried, never the worker's end
                log.exception("re-sending spooled results failed")
            await asyncio.sleep(self.cfg.spool_retry_s)

    async def _send_spooled(self) -> None:
        assert self.spool is not None
        for job_id, outcome, path in self.spool.pending():
            try:
                await self.t.done(job_id, outcome)
            except StaleResult as e:
                log.warning("spooled result of job %s refused: %s", job_id, e)
            except TransportError:
                return
            else:
                log.info("spooled result of job %s delivered", job_id)
            self.spool.remove(path)
            self.spooled.discard(job_id)
