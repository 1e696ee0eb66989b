"""What the SQLite journal keeps: one rule, ``keeps``, the broker's writes through it, and its read back at start-up.

A /run job is journaled from its submit to its expiry, so that it survives a restart. A /runsync or OpenAI job
never is: its client holds the connection, which a restart ends anyway. Every write below applies the rule, so
that no caller checks it again. ``recover`` puts what the journal kept back into a broker that starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ...models import JobStatus
from .archive import Retained
from .record import JobRecord
from .store import JobStore

if TYPE_CHECKING:
    from .broker import Broker

__all__ = ["Journal", "keeps", "recover"]


def keeps(r: JobRecord) -> bool:
    """Whether the journal keeps this job (and so whether a change to it must be waited for to be durable)."""
    return not r.sync


class Journal:
    """The broker's store, or none (nothing is journaled): each write is for a record the rule keeps."""

    __slots__ = ("store",)

    def __init__(self, store: JobStore | None) -> None:
        self.store = store

    def keeps(self, r: JobRecord) -> bool:
        """Whether a change to ``r`` is written at all (with a store, and a job ``keeps`` keeps)."""
        return self.store is not None and not r.sync

    def insert(self, r: JobRecord) -> None:
        if self.store is not None and not r.sync:
            self.store.insert(r)

    def update(self, r: JobRecord, *, now: bool = False) -> None:
        """``now``: commit without lingering (a change someone will wait for)."""
        if self.store is not None and not r.sync:
            self.store.update(r, now=now)

    def add_stream(self, r: JobRecord, first: int) -> None:
        """The job's stream items from index ``first`` on (those just appended)."""
        if self.store is not None and not r.sync:
            for i in range(first, len(r.stream)):
                self.store.add_stream(r.id, i, r.stream[i])

    def reset_stream(self, r: JobRecord) -> None:
        if self.store is not None and not r.sync:
            self.store.reset_stream(r.id)

    def delete(self, records: Iterable[JobRecord]) -> None:
        if self.store is not None:
            self.store.delete([r.id for r in records if not r.sync])

    def set_meta(self, key: str, value: Any) -> None:
        if self.store is not None:
            self.store.set_meta(key, value)

    async def flush(self) -> None:
        """Wait until every change so far is written."""
        if self.store is not None:
            await self.store.flush()

    async def read_input(self, r: JobRecord) -> Any:
        """A job's input: a finished /run record drops it, and the journal still has it (None for /runsync)."""
        if r.input is None and self.store is not None and not r.sync:
            return await self.store.read_input(r.id)
        return r.input


async def recover(b: Broker) -> None:
    """A start-up: queued jobs queue again in the order they were submitted, running ones were orphaned by the
    restart and requeue (a lost lease, counted), and finished ones are retained for what is left of their
    retention (the newest up to the bound on retained jobs)."""
    if b.store is None:
        return
    records, meta = await b.store.open(b.cfg.max_retained_bytes, Retained.loaded_size, b.clock())
    b.retried = int(meta.get("retried", 0))
    records.sort(key=lambda r: r.created)
    for r in records:
        b.table.add(r)
        r.recovered = not r.status.terminal
        if r.status is JobStatus.IN_PROGRESS:
            b.requeue(r, front=False)
        elif r.status is JobStatus.IN_QUEUE:
            b.queue.add(r)
        if (due := r.ttl_due) is not None and not r.status.terminal:
            b.deadlines.at(due, "ttl", r)
    b.retained.load([r for r in records if r.status.terminal], b.store.left_on_disk)
