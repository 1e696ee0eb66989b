"""The ``@handler`` decorator: detects the handler's kind and carries its options."""

from __future__ import annotations

import enum
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from pydantic import BaseModel

from .errors import ConfigError

__all__ = ["DEFAULT_BATCH_WAIT_MS", "ConcurrencyModifier", "Handler", "HandlerKind", "handler"]

ConcurrencyModifier = Callable[[int], int]
DEFAULT_BATCH_WAIT_MS = 10.0


class HandlerKind(enum.Enum):
    SYNC = "sync"
    ASYNC = "async"
    SYNC_GEN = "sync_generator"
    ASYNC_GEN = "async_generator"

    # Plain attributes of each member, set below: the runner reads them for every job, and a property on an enum
    # costs a call each read.
    streams: bool  # a generator: it yields stream items
    threaded: bool  # runs in a thread (sync code)


for _kind in HandlerKind:
    _kind.streams = _kind in (HandlerKind.SYNC_GEN, HandlerKind.ASYNC_GEN)
    _kind.threaded = _kind in (HandlerKind.SYNC, HandlerKind.SYNC_GEN)


def _kind_of(fn: Callable[..., Any]) -> HandlerKind:
    call = vars(type(fn)).get("__call__")
    if not inspect.isfunction(fn) and inspect.isfunction(call):
        fn = types.MethodType(call, fn)  # an instance of a class with a Python __call__: that method decides the kind
    if inspect.isasyncgenfunction(fn):
        return HandlerKind.ASYNC_GEN
    if inspect.iscoroutinefunction(fn):
        return HandlerKind.ASYNC
    if inspect.isgeneratorfunction(fn):
        return HandlerKind.SYNC_GEN
    return HandlerKind.SYNC


def _first_annotation(fn: Callable[..., Any]) -> Any:
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        return None
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward refs: no inferred model, the caller can still pass one
        return None
    return hints.get(params[0].name)


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _model_from_signature(fn: Callable[..., Any], *, batched: bool) -> type[BaseModel] | None:
    """A first parameter annotated with a pydantic model makes that model the input schema; for a batched
    handler, a ``list[Model]`` (or ``Sequence[Model]``) parameter does."""
    ann = _first_annotation(fn)
    if not batched:
        return ann if _is_model(ann) else None
    if _is_model(ann):
        raise ConfigError(
            f"a batched handler receives a list of inputs: annotate its parameter list[{ann.__name__}], "
            f"not {ann.__name__}"
        )
    args = typing.get_args(ann)
    origin = typing.get_origin(ann)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Sequence) and len(args) == 1:
        return args[0] if _is_model(args[0]) else None
    return None


@dataclass(eq=False)
class Handler:
    """A user function plus everything the runtime needs to know to run it.

    Calling the object calls the function, so a decorated function stays usable in plain Python and tests.
    """

    fn: Callable[..., Any]
    concurrency: int = 1
    timeout: float | None = None
    aggregate_stream: bool = False
    input_model: type[BaseModel] | None = None
    setup: Callable[[], Any] | None = None
    concurrency_modifier: ConcurrencyModifier | None = None
    batch_size: int | None = None
    batch_wait_ms: float | None = None
    checks: Sequence[Callable[[], Any]] = ()
    kind: HandlerKind = field(init=False)
    # True when the function takes the validated model itself rather than the Job.
    takes_model: bool = field(init=False, default=False)
    name: str = field(init=False)

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise ConfigError(f"@handler needs a function, got {self.fn!r}")
        if not isinstance(self.concurrency, int) or isinstance(self.concurrency, bool) or self.concurrency < 1:
            raise ConfigError(f"concurrency must be an int >= 1, got {self.concurrency!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if self.input_model is not None and not (
            isinstance(self.input_model, type) and issubclass(self.input_model, BaseModel)
        ):
            raise ConfigError(f"input_model must be a pydantic model class, got {self.input_model!r}")
        self.kind = _kind_of(self.fn)
        self.name = getattr(self.fn, "__qualname__", repr(self.fn))
        self._check_batching()
        inferred = _model_from_signature(self.fn, batched=self.batched)
        if inferred is not None:
            self.takes_model = True
            if self.input_model is None:
                self.input_model = inferred
        if self.setup is not None and not callable(self.setup):
            raise ConfigError(f"setup must be callable, got {self.setup!r}")
        if isinstance(self.checks, str | bytes) or not all(callable(c) for c in self.checks):
            raise ConfigError(f"checks must be a list of functions, got {self.checks!r}")
        self.checks = tuple(self.checks)

    @property
    def batched(self) -> bool:
        """True when the function receives a list of jobs (``batch_size`` was given)."""
        return self.batch_size is not None

    def _check_batching(self) -> None:
        if self.batch_size is None:
            if self.batch_wait_ms is not None:
                raise ConfigError("batch_wait_ms needs batch_size: it is how long a batch waits to fill")
            return
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if self.batch_wait_ms is None:
            self.batch_wait_ms = DEFAULT_BATCH_WAIT_MS
        wait = self.batch_wait_ms
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait < float("inf"):
            raise ConfigError(f"batch_wait_ms must be a number of milliseconds >= 0, got {wait!r}")
        if self.kind.streams:
            # One call makes one result per job at its end; a stream is one job's items as they come. A batched
            # generator would have to say which job each item is for, and its slowest job would hold every other
            # job's stream open: stream per job (no batch_size), or batch and return.
            raise ConfigError(
                f"{self.name} is a generator: generators are not batched (a stream belongs to one job); "
                "drop batch_size, or return a list of outputs instead of yielding"
            )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


@overload
def handler(fn: Callable[..., Any], /) -> Handler: ...


@overload
def handler(
    *,
    concurrency: int = 1,
    timeout: float | None = None,
    aggregate_stream: bool = False,
    input_model: type[BaseModel] | None = None,
    setup: Callable[[], Any] | None = None,
    concurrency_modifier: ConcurrencyModifier | None = None,
    batch_size: int | None = None,
    batch_wait_ms: float | None = None,
    checks: Sequence[Callable[[], Any]] = (),
) -> Callable[[Callable[..., Any]], Handler]: ...


def handler(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    concurrency: int = 1,
    timeout: float | None = None,
    aggregate_stream: bool = False,
    input_model: type[BaseModel] | None = None,
    setup: Callable[[], Any] | None = None,
    concurrency_modifier: ConcurrencyModifier | None = None,
    batch_size: int | None = None,
    batch_wait_ms: float | None = None,
    checks: Sequence[Callable[[], Any]] = (),
) -> Handler | Callable[[Callable[..., Any]], Handler]:
    """Mark a function as the job handler.

    The function may be sync, async, a generator or an async generator; it receives a :class:`Job` (or, when
    its first parameter is annotated with a pydantic model, the validated input).

    Args:
        concurrency: jobs this process runs at once (default 1).
        timeout: seconds before a job ends TIMED_OUT (a job's ``policy.executionTimeout`` can shorten it).
        aggregate_stream: for generators, the final output is the list of every yielded item.
        input_model: a pydantic model the job input must satisfy; invalid input fails the job before the
            handler runs.
        setup: called once (sync or async) before the first job, e.g. to load a model. Its return value is
            ``job.state``. While it runs, /health counts the worker as initializing.
        concurrency_modifier: called with the current limit before each take; returns the new limit (of
            batches, for a batched handler).
        batch_size: batch jobs: the function receives a list of up to this many jobs (or validated models, for a
            ``list[Model]`` parameter) and returns a list of outputs, one per job, in order. A batch runs when
            ``batch_size`` jobs are waiting or ``batch_wait_ms`` after its first job was taken; ``concurrency``
            then counts batches. An output that is an exception (or ``{"error": ...}``) fails its job alone; a
            raised exception fails every job of the batch. Generators are not batched.
        batch_wait_ms: how long a batch waits to fill after its first job (default 10 ms; 0: take what is there).
        checks: functions (sync or async) run once before the setup hook and the first job, e.g.
            ``handler_sdk.checks.free_disk(20)``; one that raises (or returns False) makes the worker exit 1.
    """

    def wrap(f: Callable[..., Any]) -> Handler:
        return Handler(
            f,
            concurrency=concurrency,
            timeout=timeout,
            aggregate_stream=aggregate_stream,
            input_model=input_model,
            setup=setup,
            concurrency_modifier=concurrency_modifier,
            batch_size=batch_size,
            batch_wait_ms=batch_wait_ms,
            checks=checks,
        )

    if fn is not None:
        return wrap(fn)
    return wrap
