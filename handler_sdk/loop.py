"""The event loop serve and the worker run on: uvloop where it is installed (the ``fast`` extra), else asyncio's.

``HANDLER_SDK_LOOP`` chooses: unset or ``auto`` takes uvloop when it imports; ``asyncio`` keeps the standard loop
(to rule uvloop out when chasing a bug); ``uvloop`` insists on it and fails start-up when it is missing, so that a
deployment that expects it cannot silently run slower. uvloop sits beside vLLM already (uvicorn pulls it in).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = ["ENV", "loop_factory", "loop_name", "run"]

ENV = "HANDLER_SDK_LOOP"
_CHOICES = ("auto", "uvloop", "asyncio")

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def _uvloop_factory() -> LoopFactory | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def loop_factory(choice: str | None = None) -> LoopFactory | None:
    """The factory for the chosen loop (``None``: asyncio's own). ``choice`` defaults to ``$HANDLER_SDK_LOOP``."""
    raw = os.environ.get(ENV, "") if choice is None else choice
    want = raw.strip().lower() or "auto"
    if want not in _CHOICES:
        raise ConfigError(f"{ENV}={raw!r} is not one of {', '.join(_CHOICES)}")
    if want == "asyncio":
        return None
    factory = _uvloop_factory()
    if factory is None and want == "uvloop":
        raise ConfigError(f"{ENV}=uvloop but uvloop is not installed (pip install 'handler-sdk[fast]')")
    return factory


def loop_name(choice: str | None = None) -> str:
    """``"uvloop"`` or ``"asyncio"``: what :func:`run` would run on (for logs and benchmark reports)."""
    return "asyncio" if loop_factory(choice) is None else "uvloop"


def run(main: Coroutine[Any, Any, T], choice: str | None = None) -> T:
    """``asyncio.run(main)`` on the chosen loop. A bad ``HANDLER_SDK_LOOP`` raises ConfigError before ``main``
    starts (and ``main`` is closed, so no 'never awaited' warning hides the error)."""
    try:
        factory = loop_factory(choice)
    except ConfigError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
