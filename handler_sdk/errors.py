"""One error hierarchy for the whole SDK.

::

    HandlerSDKError
    ├── UserError                      the model author's or the client's doing
    │   ├── ConfigError                bad target, bad option, bad env var (fails start-up)
    │   ├── SetupError                 the setup hook raised (the process exits non-zero)
    │   ├── JobFailure                 ends one job FAILED (reported, never raised past the runner)
    │   │   ├── InvalidInput           the input model rejected the job's input
    │   │   ├── OutputNotSerializable  an output orjson cannot encode
    │   │   ├── OutputTooLarge         over the 1 MiB stream limit or the result cap
    │   │   ├── HandlerError           the handler returned or yielded {"error": ...}
    │   │   └── FileError              a File output or a files.download() that cannot be done
    │   ├── StateError                 a change a job's state refuses (no HTTP here: the router maps it, 409)
    │   │   └── IllegalTransition      a status change the lifecycle forbids
    │   └── HTTPError                  a client request answered with a 4xx JSON body
    │       ├── BadRequest (400) · Unauthorized (401) · NotFound (404) · Conflict (409)
    │       │   └── NestedTooDeep     a body nested deeper than codec.MAX_DEPTH
    │       ├── RequestTimeout (408) · PayloadTooLarge (413) · Unprocessable (422) · TooManyRequests (429)
    └── InfrastructureError            outside the user's control
        ├── WorkerDead                 the process can serve no further job (its engine died): exit non-zero
        ├── TransportError             a worker could not reach the endpoint
        │   └── StaleResult            the endpoint refused a result (409): cancelled, re-leased or ended
        └── StoreError                 the job store failed (a request that needed it: 503, Retry-After)
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BadRequest",
    "ConfigError",
    "Conflict",
    "FileError",
    "HTTPError",
    "HandlerError",
    "HandlerSDKError",
    "IllegalTransition",
    "InfrastructureError",
    "InvalidInput",
    "JobFailure",
    "NestedTooDeep",
    "NotEnabled",
    "NotFound",
    "OutputNotSerializable",
    "OutputTooLarge",
    "PayloadTooLarge",
    "RequestTimeout",
    "SetupError",
    "StaleResult",
    "StateError",
    "StoreError",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "Unprocessable",
    "UserError",
    "WorkerDead",
]


class HandlerSDKError(Exception):
    """Base of every error raised by handler_sdk."""


class UserError(HandlerSDKError):
    pass


class ConfigError(UserError):
    pass


class SetupError(UserError):
    pass


class JobFailure(UserError):
    """Ends one job FAILED with this message; the runner turns it into the job's error."""


class InvalidInput(JobFailure):
    pass


class OutputNotSerializable(JobFailure):
    pass


class OutputTooLarge(JobFailure):
    pass


class HandlerError(JobFailure):
    """The handler reported an error by value (runpod convention) rather than by raising."""


class FileError(JobFailure):
    """A File output that cannot be inlined or uploaded, or a download refused or failed (the message says why)."""


class StateError(UserError):
    """A change the job's state refuses. Raised by the state side (serve/state, lifecycle.py), which imports no
    HTTP; the HTTP router answers each kind with its status."""


class IllegalTransition(StateError):
    """A status change the lifecycle forbids; answered 409 where a request caused it."""


class HTTPError(UserError):
    status: ClassVar[int] = 400

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadRequest(HTTPError):
    status = 400


class NestedTooDeep(BadRequest):
    """A JSON body nested deeper than can be encoded again (see codec.MAX_DEPTH)."""


class Unauthorized(HTTPError):
    status = 401


class NotFound(HTTPError):
    status = 404


class Conflict(HTTPError):
    status = 409


class RequestTimeout(HTTPError):
    """The client did not send its request body within the body timeout."""

    status = 408


class PayloadTooLarge(HTTPError):
    status = 413


class Unprocessable(HTTPError):
    """422: a well-formed request the endpoint will not act on (an Idempotency-Key reused for another request)."""

    status = 422


class TooManyRequests(HTTPError):
    status = 429


class NotEnabled(HTTPError):
    """A route whose feature is off or whose extra is not installed (e.g. /metrics without prometheus-client)."""

    status = 501


class InfrastructureError(HandlerSDKError):
    pass


class WorkerDead(InfrastructureError):
    """This process can serve no further job (for example, its inference engine died).

    The worker fails its running jobs with this message, takes nothing more, stops pinging and exits non-zero,
    so that the platform restarts the container. A setup state announces it with ``until_dead()``.
    """


class TransportError(InfrastructureError):
    pass


class StaleResult(TransportError):
    """The endpoint answered 409: the job was cancelled, re-leased or has ended. Retrying cannot help."""


class StoreError(InfrastructureError):
    pass
