"""errorDetails has one builder (models.make_error_details): the runner's, the broker's and the worker routes'
details all come from it, and read as the ErrorDetails model declares."""

from __future__ import annotations

from handler_sdk.models import ErrorDetails, JobStatus, Policy, RunRequest, make_error_details
from handler_sdk.runner import error_details
from handler_sdk.serve.http.workers import normalize_error
from handler_sdk.serve.state.broker import Broker

S = JobStatus
FIELDS = ["error_type", "error_message", "error_traceback"]


def test_make_error_details_builds_the_three_fields_and_a_workers_extras_after_them() -> None:
    assert make_error_details("ValueError", "boom") == {
        "error_type": "ValueError", "error_message": "boom", "error_traceback": None,
    }  # fmt: skip
    d = make_error_details("ValueError", "boom", "tb", worker_id="w", hostname="h")
    assert list(d) == [*FIELDS, "worker_id", "hostname"]
    assert ErrorDetails.model_validate(d).hostname == "h"


def test_the_runner_the_broker_and_the_worker_routes_build_the_same_shape() -> None:
    try:
        raise ValueError("boom")
    except ValueError as e:
        from_runner = error_details(e)
    assert list(from_runner) == FIELDS and "ValueError: boom" in (from_runner["error_traceback"] or "")

    ticks = iter(range(0, 10**6, 1000))
    broker = Broker(clock=lambda: next(ticks))
    r = broker.submit(RunRequest(input={}, policy=Policy(ttl=1)))
    broker.expire_due()
    assert r.status is S.TIMED_OUT
    assert r.error_details == make_error_details("TimeoutError", "job exceeded its ttl of 1 ms")

    assert normalize_error("plain text") == ("plain text", make_error_details("HandlerError", "plain text"))
    assert normalize_error("handler: msg \ntraceback: tb") == (
        "HandlerError: msg", make_error_details("HandlerError", "msg", "tb"),
    )  # fmt: skip
    text, details = normalize_error({"error_type": "<class 'KeyError'>", "error_message": "k", "hostname": "h"})
    assert (text, details) == ("KeyError: k", make_error_details("KeyError", "k", None, worker_id=None, hostname="h"))
    assert ErrorDetails.model_validate(details).error_type == "KeyError"
