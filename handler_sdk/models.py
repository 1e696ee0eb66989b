"""Every wire format in one place: the client API, the worker protocol and the stream items.

Incoming bodies are validated with these models. Outgoing replies are built as plain dicts on the hot path and
declared here as models; the tests validate every reply the server sends against them.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = [
    "MAX_STREAM_BATCH_BYTES",
    "MAX_STREAM_BYTES",
    "CancelReply",
    "DashboardJob",
    "DashboardJobDetail",
    "DashboardPoint",
    "DashboardState",
    "DashboardWorker",
    "DoneBatchBody",
    "DoneBatchReply",
    "DoneBody",
    "DoneCode",
    "DoneItem",
    "ErrorDetails",
    "ErrorReply",
    "FileRef",
    "HandBackBody",
    "HandBackReply",
    "HealthJobs",
    "HealthReply",
    "HealthWorkers",
    "InlineFile",
    "JobReply",
    "JobStatus",
    "OkReply",
    "OpenAIErrorBody",
    "OpenAIErrorReply",
    "Policy",
    "PurgeReply",
    "RequestsEntry",
    "RequestsReply",
    "RunReply",
    "RunRequest",
    "StreamAck",
    "StreamBatchBody",
    "StreamBatchReply",
    "StreamBody",
    "StreamCode",
    "StreamItem",
    "StreamPart",
    "StreamReply",
    "TakeStopReply",
    "TakenJob",
    "WebhookBody",
    "WebhookEvent",
    "make_error_details",
]

MAX_STREAM_BYTES = 1 << 20
# The endpoint reads a job-stream-batch request (many jobs' items) of up to this much; our worker keeps each one
# within MAX_STREAM_BYTES, like every other stream request.
MAX_STREAM_BATCH_BYTES = 8 << 20
"""The platform's 1 MB stream limit, read as 1 MiB of serialized JSON."""


class JobStatus(enum.StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    # Whether a job in this status has ended. A plain attribute of each member, set below: the broker reads it
    # several times per job, and a property on an enum cost 0.28 us a read.
    terminal: bool


_TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT})
for _status in JobStatus:
    _status.terminal = _status in _TERMINAL


class _Lenient(BaseModel):
    # Clients send extra fields (runpod's SDK adds its own); ignoring them is what the platform does.
    model_config = ConfigDict(extra="ignore")


class Policy(_Lenient):
    # Frozen, so every request without a policy can share one default instead of building its own.
    model_config = ConfigDict(frozen=True)

    execution_timeout: int | None = Field(default=None, alias="executionTimeout", ge=1)
    ttl: int | None = Field(default=None, ge=1)
    low_priority: bool = Field(default=False, alias="lowPriority")


_NO_POLICY = Policy()

WebhookEvent = Literal["start", "progress", "output", "completed"]
"""What a job's webhook can hear about: the job started, a progress update, stream items, and its end (any final
status). A request that names none hears ``completed`` only."""


class RunRequest(_Lenient):
    """Body of /run and /runsync."""

    input: dict[str, Any]
    webhook: str | None = None
    policy: Policy = _NO_POLICY
    webhook_events: list[WebhookEvent] | None = Field(default=None, alias="webhookEvents")

    @field_validator("webhook")
    @classmethod
    def _http_webhook(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("webhook must be an http(s) URL")
        return v

    @field_validator("webhook_events")
    @classmethod
    def _events_need_a_webhook(cls, v: list[WebhookEvent] | None, info: ValidationInfo) -> list[WebhookEvent] | None:
        if v is not None and info.data.get("webhook") is None:
            raise ValueError("webhookEvents needs a webhook URL to send them to")
        return v


class ErrorDetails(_Lenient):
    error_type: str
    error_message: str
    error_traceback: str | None = None
    worker_id: str | None = None
    hostname: str | None = None


def make_error_details(error_type: str, message: str, traceback: str | None = None, **extra: Any) -> dict[str, Any]:
    """A job's errorDetails (``ErrorDetails``), as replies, webhooks and the journal carry it: built only here
    (the Redis store's Lua transitions write the same three fields). ``extra``: a worker's ``worker_id`` and
    ``hostname``."""
    return {"error_type": error_type, "error_message": message, "error_traceback": traceback, **extra}


class JobReply(_Lenient):
    """/status, /status-sync and a finished /runsync."""

    id: str
    status: JobStatus
    delayTime: int | None = None
    executionTime: int | None = None
    output: Any = None
    error: str | None = None
    errorDetails: ErrorDetails | None = None
    retries: int | None = None
    workerId: str | None = None


class FileRef(_Lenient):
    """A ``handler_sdk.File`` output uploaded to the bucket (or a final output offloaded there)."""

    url: str
    content_type: str
    size: int


class InlineFile(_Lenient):
    """A ``handler_sdk.File`` output without a bucket: its bytes inlined in the output."""

    content_type: str
    data_base64: str


class RunReply(_Lenient):
    id: str
    status: JobStatus


class CancelReply(RunReply):
    pass


class StreamItem(_Lenient):
    output: Any
    metrics: dict[str, Any]


class StreamReply(_Lenient):
    id: str
    status: JobStatus
    stream: list[StreamItem]


class WebhookBody(JobReply):
    """What a webhook receives: the job's JSON at the event (as /status shows it then), the event's name, and for
    ``output`` the stream items it carries (as /stream returns them)."""

    event: WebhookEvent
    stream: list[StreamItem] | None = None


class PurgeReply(_Lenient):
    removed: int
    status: Literal["completed"]


class HealthJobs(_Lenient):
    completed: int
    failed: int
    inProgress: int
    inQueue: int
    retried: int


class HealthWorkers(_Lenient):
    idle: int
    running: int
    initializing: int = 0


class HealthReply(_Lenient):
    jobs: HealthJobs
    workers: HealthWorkers


class RequestsEntry(_Lenient):
    id: str
    status: JobStatus
    createdAt: int
    delayTime: int | None = None
    executionTime: int | None = None


class RequestsReply(_Lenient):
    requests: list[RequestsEntry]
    total: int
    limit: int
    offset: int


# --- worker protocol -----------------------------------------------------------------------------------------


class TakenJob(_Lenient):
    """One job as job-take hands it to a worker (runpod shape, plus our optional policy)."""

    id: str
    input: Any
    policy: Policy | None = None
    # The job's W3C trace context: the client's traceparent header, or a new trace serve started.
    traceparent: str | None = None


class DoneBody(_Lenient):
    """Body of job-done. ``status`` is our extension for TIMED_OUT and CANCELLED outcomes."""

    output: Any = None
    error: Any = None
    status: JobStatus | None = None
    stopPod: bool | None = None
    model_config = ConfigDict(extra="ignore")


class DoneItem(DoneBody):
    """One result in a job-done-batch body (our done-batch extension): a job-done body plus its job's id."""

    id: str


class DoneBatchBody(_Lenient):
    """Body of job-done-batch: ``{"results": [{"id": ..., ...a job-done body...}, ...]}``."""

    results: list[DoneItem]


class DoneCode(_Lenient):
    """How one result of a job-done-batch was judged: the status job-done would have answered."""

    id: str
    code: int


class DoneBatchReply(_Lenient):
    """Reply of job-done-batch: one code per result, in the order posted."""

    ok: bool
    results: list[DoneCode]


class TakeStopReply(_Lenient):
    """Reply of job-stop: the jobs this worker must stop."""

    jobsToStop: list[str]


class OkReply(_Lenient):
    """Reply of job-done and ping."""

    ok: bool


class StreamAck(OkReply):
    """Reply of job-stream: the job's stream item count so far."""

    items: int


class HandBackBody(_Lenient):
    """Body of job-handback (our extension): the jobs a draining worker returns to the queue."""

    ids: list[str]


class HandBackReply(OkReply):
    handedBack: int


class ErrorReply(_Lenient):
    """Every error reply but the OpenAI routes': 400, 401, 404, 405, 409, 413, 429, 501, 503."""

    error: str


class OpenAIErrorBody(_Lenient):
    message: str
    type: str
    code: int


class OpenAIErrorReply(_Lenient):
    """An error reply of the OpenAI routes, in OpenAI's shape."""

    error: OpenAIErrorBody


class StreamBody(_Lenient):
    """Body of job-stream: one ``output`` (runpod), or several ``outputs`` (our batch extension).

    ``metrics`` travels beside the output(s): a dict for one item, a list of dicts (or nulls) for several.
    """

    output: Any = None
    outputs: list[Any] | None = None
    metrics: dict[str, Any] | list[dict[str, Any] | None] | None = None


class StreamPart(StreamBody):
    """One job's items in a job-stream-batch body (our stream-multi extension): a job-stream body plus its id."""

    id: str


class StreamBatchBody(_Lenient):
    """Body of job-stream-batch: ``{"streams": [{"id": ..., ...a job-stream body...}, ...]}``."""

    streams: list[StreamPart]


class StreamCode(_Lenient):
    """How one part of a job-stream-batch was judged: the status job-stream would have answered, and on 200 the
    job's item count."""

    id: str
    code: int
    items: int | None = None


class StreamBatchReply(_Lenient):
    """Reply of job-stream-batch: one code per part, in the order posted."""

    ok: bool
    results: list[StreamCode]


# --- the dashboard's data routes -----------------------------------------------------------------------------


class DashboardWorker(_Lenient):
    id: str
    state: Literal["idle", "running", "initializing"]
    jobs: list[str]
    lastPing: int  # when the endpoint last heard from it, ms since the epoch


class DashboardPoint(_Lenient):
    """One second of finished jobs: counts and mean latencies (ms), null when none started in it."""

    t: int
    completed: int
    failed: int
    cancelled: int
    delayMs: float | None = None
    executionMs: float | None = None


class DashboardJob(RequestsEntry):
    """A row of the dashboard's recent jobs."""

    error: str | None = None


class DashboardState(_Lenient):
    """What the dashboard shows, as one snapshot (``/dashboard/state``, and each line of ``/dashboard/events``)."""

    endpoint: str
    now: int
    health: HealthReply
    workers: list[DashboardWorker]
    series: list[DashboardPoint]
    recent: list[DashboardJob]
    submitted: dict[str, int]
    streamItems: int


class DashboardJobDetail(JobReply):
    """One job in full for the dashboard: its input, and its stream items from ``from``."""

    input: Any = None
    createdAt: int
    stream: list[StreamItem]
    streamTotal: int
