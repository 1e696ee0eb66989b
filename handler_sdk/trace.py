"""W3C trace context: the ``traceparent`` a job carries from the client's request to its worker and webhook.

A job keeps the client's ``traceparent`` as sent (when it is well formed); without one, its trace is derived from
the job's own random id, so that starting a trace costs nothing on the submit path and reads the same after a
restart. The worker runs each job with its traceparent in a context variable, which the log formatters add to
every line logged for that job.
"""

from __future__ import annotations

import re
from contextvars import ContextVar

__all__ = ["current", "derived", "parse"]

# version-traceid-parentid-flags; a future version may append fields after a dash (W3C Trace Context 4.3).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_HEX_BYTES = b"0123456789abcdef"
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

current: ContextVar[str | None] = ContextVar("handler_sdk_traceparent", default=None)
"""The traceparent of the job whose code is running (None outside any job)."""


def parse(header: str | None) -> str | None:
    """``header`` if it is a valid traceparent, else None (the spec says to ignore an invalid one and start a new
    trace). Version ff is invalid, and version 00 has no trailing fields."""
    if header is None:
        return None
    value = header.strip()
    m = _TRACEPARENT.fullmatch(value)
    if m is None or m[1] == "ff" or m[2] == _ZERO_TRACE or m[3] == _ZERO_SPAN or (m[1] == "00" and m[5]):
        return None
    return value


def derived(job_id: str) -> str:
    """A new trace for a job that came without one: trace id and parent id read from the job's random UUID."""
    h = job_id.removeprefix("sync-").replace("-", "")
    # (32 lowercase hex digits: what deleting them leaves nothing of. Bytes, because str.strip with a set of
    # characters cost a third of a microsecond per job.)
    if len(h) != 32 or h.encode().translate(None, _HEX_BYTES):
        h = (h.encode().hex() + "1" * 32)[:32]  # ids from other brokers: still a valid, non-zero trace
    return f"00-{h}-{h[16:]}-01"
