"""Idempotent submits: the ``Idempotency-Key`` header of /run and /runsync, after the IETF draft
(draft-ietf-httpapi-idempotency-key-header).

A key names one submit. A repeat with the same key and the same request returns the job the first one made, for
as long as that job is retained: /run answers with its id, /runsync waits for it and answers with its result; a
repeat carries ``Idempotent-Replayed: true``. The same key with a different request is a 422. "The same request"
is the canonical JSON (sorted keys, defaults filled in) of the whole validated body (input, webhook,
webhookEvents, policy) and the route, so a /run key repeated on /runsync is a 422 too.

A key lives exactly as long as its job, because it is kept on the job's record: /run keys are journaled with the
job (one row, one commit: a key is never on disk without its job, nor the job without its key) and so survive a
restart; /runsync keys live in memory, like their jobs, and go to disk with them when the bound on retained jobs
moves them there (archive.py). A job that lives only on disk is found through the journal's key index
(``Retained.by_key``), so a repeat finds it for its whole retention, as it would in memory; the map here holds only
the keys of jobs in memory. Once the job is past its retention, or purged from the queue, its key is free again and
a repeat makes a new job.

A repeat that arrives while the first is still running is not the draft's 409: submitting is one step on the
event loop, so the repeat finds the job and waits on it like the first.

Keys are the draft's Structured Field string (``"abc"``, quoted), or, as most clients send them, the same
characters bare; 1 to 255 printable ASCII characters. Anything else is a 400.
"""

from __future__ import annotations

import hashlib

from ... import codec
from ...errors import BadRequest, Unprocessable
from ...models import RunRequest
from .broker import Broker
from .record import JobRecord

__all__ = ["KEY_HEADER", "REPLAYED_HEADER", "IdempotencyKeys", "parse_key"]

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY = 255


def parse_key(raw: str | None) -> str | None:
    """The key in an ``Idempotency-Key`` header value, None when there is none; BadRequest when malformed."""
    if raw is None:
        return None
    v = raw.strip(" \t")
    if v.startswith('"'):
        key = _sf_string(v)
    elif v and all(0x21 <= ord(c) <= 0x7E and c not in '"\\' for c in v):
        key = v
    else:
        key = None
    if key is None or not 1 <= len(key) <= MAX_KEY:
        raise BadRequest(
            f'malformed {KEY_HEADER} header {raw[:80]!r}: expected a quoted string such as "8e03978e-40d5" '
            f"(or the same bare), 1 to {MAX_KEY} printable ASCII characters"
        )
    return key


def _sf_string(v: str) -> str | None:
    """An RFC 8941 sf-string: quoted printable ASCII, with only ``\\"`` and ``\\\\`` as escapes."""
    out: list[str] = []
    i, n = 1, len(v)
    while i < n:
        c = v[i]
        if c == "\\":
            if i + 1 >= n or v[i + 1] not in '"\\':
                return None
            out.append(v[i + 1])
            i += 2
        elif c == '"':
            return "".join(out) if i == n - 1 else None
        elif 0x20 <= ord(c) <= 0x7E:
            out.append(c)
            i += 1
        else:
            return None
    return None  # no closing quote


def fingerprint(req: RunRequest, route: str) -> str:
    body = req.model_dump(mode="json", by_alias=True)
    return hashlib.sha256(route.encode() + b"\n" + codec.dumps_canonical(body)).hexdigest()


class IdempotencyKeys:
    """The endpoint's keys: key -> (job id, fingerprint), rebuilt from the journaled jobs on first use."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._keys: dict[str, tuple[str, str]] = {}
        self._loaded = False
        self._sweep_at = 1024

    def __len__(self) -> int:
        return len(self._keys)

    def submit(
        self,
        req: RunRequest,
        key: str | None,
        *,
        sync: bool = False,
        queue: bool = True,
        trace: str | None = None,
        route: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """The job for this request: the one its key already names (True), or a new one (False). ``queue`` as in
        Broker.submit (a /run job is queued only once journaled); ``trace`` is the request's traceparent, kept with
        a new job."""
        if key is None:
            return self.broker.submit(req, sync=sync, queue=queue, trace=trace, route=route), False
        fp = fingerprint(req, "runsync" if sync else "run")
        r = self.find(key)
        if r is not None:
            return self.replay(r, key, req, sync), True
        r = self.broker.submit(req, sync=sync, idempotency=(key, fp), queue=queue, trace=trace, route=route)
        self._keys[key] = (r.id, fp)
        if len(self._keys) > self._sweep_at:
            self._sweep()
        return r, False

    @staticmethod
    def replay(r: JobRecord, key: str, req: RunRequest, sync: bool) -> JobRecord:
        """``r``, the job that ``key`` names, if this request is the one that made it; Unprocessable if not."""
        if r.idempotency != (key, fingerprint(req, "runsync" if sync else "run")):
            raise Unprocessable(
                f"{KEY_HEADER} {key!r} was used for a different request (job {r.id}); a key names one request "
                "(same body, same route) for as long as its job is retained"
            )
        return r

    def find(self, key: str) -> JobRecord | None:
        """The job in memory that ``key`` names, if any (one on disk only: ``Retained.by_key``)."""
        if not self._loaded:
            self._loaded = True
            for job_id, rec in self.broker.jobs.items():
                if (k := rec.idempotency) is not None:
                    self._keys[k[0]] = (job_id, k[1])
        hit = self._keys.get(key)
        if hit is None:
            return None
        v = self.broker.jobs.get(hit[0])
        if v is None or (k := v.idempotency) is None or k[0] != key:
            del self._keys[key]  # past its retention, purged, or on disk only: not held here
            return None
        return self.broker.get(hit[0])

    def _sweep(self) -> None:
        """Forget keys whose jobs are gone. Run when the map has doubled since the last sweep: amortized O(1) per
        submit, and at most twice the keys of the jobs still retained."""
        jobs = self.broker.jobs
        self._keys = {k: v for k, v in self._keys.items() if (rec := jobs.get(v[0])) is not None and rec.idempotency}
        self._sweep_at = max(1024, 2 * len(self._keys))
