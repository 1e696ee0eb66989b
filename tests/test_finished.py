"""A finished record packed into its compact form (finished.py) reads back as the record it was, field by field,
whichever fields differ from their defaults."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from handler_sdk.models import JobStatus
from handler_sdk.serve.state.finished import Finished, freeze
from handler_sdk.serve.state.record import JobRecord

TERMINAL = [s for s in JobStatus if s.terminal]
# What a packed record does not keep: it has no stream and no waiters, and a thawed one is retained once.
SKIP = {"stream", "waiters", "retained_in", "recovered", "rerun"}
maybe_int = st.none() | st.integers(0, 10**6)


@st.composite
def finished_records(draw: st.DrawFn) -> JobRecord:
    created = draw(st.integers(0, 2**45))
    started = draw(st.none() | st.integers(0, 10**6).map(lambda d: created + d))
    ended = (created if started is None else started) + draw(st.integers(0, 10**6))
    r = JobRecord(
        "9bf417da-4e00-4981-af45-6c1188161f61", draw(st.none() | st.just({"prompt": "x", "n": 1})), created,
        sync=draw(st.booleans()), status=draw(st.sampled_from(TERMINAL)),
    )  # fmt: skip
    r.started, r.ended = started, ended
    r.retention = draw(st.integers(0, 2**32 - 1))
    r.output = draw(st.none() | st.just(b'{"a":1}') | st.just(b"[]"))
    r.worker_id = draw(st.none() | st.sampled_from(["w1", "pod-2"]))
    r.attempt = draw(st.integers(0, 4))
    r.retained_in = 1
    if draw(st.booleans()):
        return r  # every other field at its default, as most jobs end (the packing's fast path)
    r.error = draw(st.none() | st.just("HandlerError: boom"))
    r.error_details = None if r.error is None else {"error_type": "HandlerError", "error_message": "boom"}
    r.retries = draw(st.integers(0, 3))
    r.webhook = draw(st.none() | st.just("http://127.0.0.1:9/hook"))
    r.execution_timeout, r.ttl, r.requeued = draw(maybe_int), draw(maybe_int), draw(maybe_int)
    r.low_priority = draw(st.booleans())
    r.webhook_events = draw(st.none() | st.just(frozenset({"start", "completed"})))
    r.webhook_items, r.cursor = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    r.idempotency = draw(st.none() | st.just(("key-1", "fingerprint")))
    r.trace = draw(st.none() | st.just("00-" + "a" * 32 + "-" + "b" * 16 + "-01"))
    return r


@given(finished_records())
def test_a_packed_record_thaws_to_the_same_fields(r: JobRecord) -> None:
    v = freeze(r)
    assert isinstance(v, Finished)
    back = v.thaw(r.id)
    for f in dataclasses.fields(JobRecord):
        if f.name not in SKIP:
            assert getattr(back, f.name) == getattr(r, f.name), f.name
    for name in ("status", "sync", "created", "started", "ended", "output", "worker_id", "idempotency", "error"):
        assert getattr(v, name) == getattr(r, name), name
    assert v.expires == r.expires and v.attempt == r.attempt and v.retries == r.retries and v.input == r.input


def test_a_record_with_stream_items_stays_whole() -> None:
    r = JobRecord("j", None, 0, status=JobStatus.COMPLETED)
    r.ended, r.retained_in, r.stream = 1, 1, [b'{"output":1}']
    assert freeze(r) is None
