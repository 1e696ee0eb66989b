"""The ``@handler`` decorator: detects the handler's kind and carries its options."""

from __future__ import annotations

import enum
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, overload

from pydantic import BaseModel

from .errors import ConfigError

__all__ = ["ConcurrencyModifier", "Handler", "HandlerKind", "handler"]

ConcurrencyModifier = Callable[[int], int]


class HandlerKind(enum.Enum):
    SYNC = "sync"
    ASYNC = "async"
    SYNC_GEN = "sync_generator"
    ASYNC_GEN = "async_generator"

    @property
    def streams(self) -> bool:
        return self in (HandlerKind.SYNC_GEN, HandlerKind.ASYNC_GEN)

    @property
    def threaded(self) -> bool:
        return self in (HandlerKind.SYNC, HandlerKind.SYNC_GEN)


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


def _model_from_signature(fn: Callable[..., Any]) -> type[BaseModel] | None:
    """A first parameter annotated with a pydantic model makes that model the input schema."""
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        return None
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward refs: no inferred model, the caller can still pass one
        return None
    ann = hints.get(params[0].name)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
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
        inferred = _model_from_signature(self.fn)
        if inferred is not None:
            self.takes_model = True
            if self.input_model is None:
                self.input_model = inferred
        if self.setup is not None and not callable(self.setup):
            raise ConfigError(f"setup must be callable, got {self.setup!r}")

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
        concurrency_modifier: called with the current limit before each take; returns the new limit.
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
        )

    if fn is not None:
        return wrap(fn)
    return wrap
