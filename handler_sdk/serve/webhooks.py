"""Webhooks after the Standard Webhooks spec: a job's events are POSTed to its ``webhook`` URL, signed, in order,
each retried with exponential backoff, in the background (a job never waits for its webhook).

The body is the job's JSON as /status shows it at the event, with ``"event"`` added (runpod's webhook body plus
one field); an ``output`` event also carries ``"stream"``: the stream items it delivers, as /stream returns them.
Every request carries ``webhook-id`` (one per event, the same on each retry of it, so a receiver can deduplicate)
and ``webhook-timestamp`` (unix seconds of the attempt); with a secret also ``webhook-signature``: ``v1,`` and the
base64 HMAC-SHA256 of ``id.timestamp.body`` under the secret's bytes.

Events: ``start`` (leased to a worker), ``progress`` (a ``job.progress`` update), ``output`` (stream items) and
``completed`` (any final status; the default and, unless ``webhookEvents`` says otherwise, the only one).

Memory is bounded however fast a handler yields or reports progress. Each job has one outbox, and in it at most
one waiting ``progress`` and one waiting ``output`` event: a newer one takes the waiting one's place at the back.
A waiting progress event then carries the latest update (earlier ones that never left are skipped, as /status
would have skipped them); a waiting output event holds no items of its own, only the job's position in its stream,
which the record keeps anyway, and takes the items not yet sent when it leaves (at most ``output_batch_bytes``; the
rest follow in the next event). So a receiver gets every stream item once, in order, and the latest progress.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import itertools
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .. import codec
from ..errors import ConfigError
from .state.record import JobRecord

__all__ = ["Webhooks", "parse_secret", "sign"]

log = logging.getLogger(__name__)

_PREFIX = "whsec_"
_COALESCED = frozenset({"progress", "output"})


def parse_secret(secret: str) -> bytes:
    """The key bytes of a ``whsec_``-prefixed base64 secret (the prefix may be left out, as the spec's libraries
    allow); ConfigError when it is not base64 or is empty."""
    raw = secret.strip().removeprefix(_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ConfigError(
            "webhook secret must be 'whsec_' followed by base64 (e.g. whsec_" + base64.b64encode(b"0" * 24).decode()
            + "); set --webhook-secret or HANDLER_SDK_WEBHOOK_SECRET"
        )  # fmt: skip
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``msg_id.timestamp.body``."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@dataclass(slots=True, eq=False)
class _Event:
    kind: str
    snapshot: dict[str, Any]  # the job's reply at the event (for a coalesced one, at its latest)
    id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")


@dataclass(slots=True, eq=False)
class _Outbox:
    """One job's events waiting to leave, in order, and how far its stream has been sent."""

    record: JobRecord
    url: str
    pending: deque[_Event] = field(default_factory=deque)


class Webhooks:
    def __init__(
        self,
        *,
        attempts: int = 6,
        backoff_s: float = 1.0,
        timeout_s: float = 10.0,
        secret: str | None = None,
        output_batch_bytes: int = 4 << 20,
    ) -> None:
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.key = parse_secret(secret) if secret else None
        self.output_batch_bytes = output_batch_bytes
        self._session: aiohttp.ClientSession | None = None
        self._boxes: dict[str, _Outbox] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0

    # --- broker hooks --------------------------------------------------------------------------------------

    def on_terminal(self, r: JobRecord) -> None:
        if r.webhook is None:
            return
        if r.webhook_events is None or "completed" in r.webhook_events:
            self._add(r, "completed")

    def on_event(self, kind: str, r: JobRecord) -> None:
        if r.webhook is None or r.webhook_events is None or kind not in r.webhook_events:
            return
        self._add(r, kind)

    # --- the outboxes --------------------------------------------------------------------------------------

    def pending(self) -> int:
        """Events waiting to leave, over every job (not counting those being sent)."""
        return sum(len(b.pending) for b in self._boxes.values())

    def _add(self, r: JobRecord, kind: str) -> None:
        assert r.webhook is not None
        # An outbox lives while it has events to send; how far the stream was sent is kept on the record.
        box = self._boxes.get(r.id)
        if box is None or box.record is not r:
            box = self._boxes[r.id] = _Outbox(r, r.webhook)
            t = asyncio.create_task(self._send_all(box), name=f"webhook-{r.id}")
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        if kind in _COALESCED:
            for ev in box.pending:
                if ev.kind == kind:
                    box.pending.remove(ev)
                    break
        # The reply is taken now: the record moves on (a retry clears it) while we deliver.
        box.pending.append(_Event(kind, r.reply()))

    async def _send_all(self, box: _Outbox) -> None:
        try:
            while box.pending:
                ev = box.pending.popleft()
                body = self._body(box, ev)
                if body is not None:
                    await self._deliver(box, ev, body)
        finally:
            if self._boxes.get(box.record.id) is box:
                del self._boxes[box.record.id]

    def _body(self, box: _Outbox, ev: _Event) -> bytes | None:
        d = ev.snapshot
        d["event"] = ev.kind
        if ev.kind != "output":
            return codec.dumps(d)
        r = box.record
        stream = r.stream
        items: list[codec.Fragment] = []
        size = 0
        for item in itertools.islice(stream, r.webhook_items, None):
            if items and size + len(item) > self.output_batch_bytes:
                break
            items.append(codec.Fragment(item))
            size += len(item)
        if not items:
            return None  # an earlier output event already carried them
        r.webhook_items += len(items)
        if r.webhook_items < len(stream) and not any(e.kind == "output" for e in box.pending):
            # The rest happened before anything still waiting: they leave next.
            box.pending.appendleft(_Event("output", dict(ev.snapshot)))
        d["stream"] = items
        return codec.dumps(d)

    # --- delivery ------------------------------------------------------------------------------------------

    def _headers(self, msg_id: str, body: bytes) -> dict[str, str]:
        ts = int(time.time())  # per attempt: receivers refuse old timestamps, and a retry may come minutes later
        h = {"Content-Type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(ts)}
        if self.key is not None:
            h["webhook-signature"] = sign(self.key, msg_id, ts, body)
        return h

    async def _deliver(self, box: _Outbox, ev: _Event, body: bytes) -> None:
        await self.post(box.url, ev.kind, ev.id, body, job_id=box.record.id, traceparent=box.record.traceparent)

    async def send_completed(self, job_id: str, url: str, reply: dict[str, Any], traceparent: str, msg_id: str) -> bool:
        """One job's completed event, for a store that keeps its own outbox (Redis): True once delivered."""
        body = codec.dumps({**reply, "event": "completed"})
        return await self.post(url, "completed", msg_id, body, job_id=job_id, traceparent=traceparent)

    async def post(self, url: str, kind: str, msg_id: str, body: bytes, *, job_id: str, traceparent: str) -> bool:
        """POST one event, retried with backoff up to ``attempts`` times; True once a 2xx answered it."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                headers = self._headers(msg_id, body)
                headers["traceparent"] = traceparent  # the job's W3C trace context
                async with self._session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status < 300:
                        self.delivered += 1
                        return True
                    why = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                why = f"{type(e).__name__}: {e}"
            if attempt < self.attempts:
                log.warning("%s webhook for job %s failed (%s); retry %d in %.1fs", kind, job_id, why, attempt,
                            delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay *= 2
            else:
                log.error("%s webhook for job %s dropped after %d attempts (%s)", kind, job_id, attempt, why)
        return False

    def lease_ms(self) -> int:
        """How long one delivery, all its attempts and waits, can take: a replica holds a claim this long."""
        waits = sum(self.backoff_s * 2**i for i in range(self.attempts - 1))
        return int((waits + self.attempts * self.timeout_s) * 1000) + 5_000

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
