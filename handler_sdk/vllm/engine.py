"""The engine adapter: one vLLM ``AsyncLLM`` per worker process, its stats, and its OpenAI serving objects."""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import threading
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from vllm import AsyncEngineArgs
from vllm.v1.engine.async_llm import AsyncLLM

from ..errors import InfrastructureError
from . import stream
from .config import EngineConfig
from .metrics import EngineStats
from .openai import OpenAIServing
from .tiny import ensure_tiny_model

if TYPE_CHECKING:
    from ..outputs import Chunk, Final
    from .inputs import GenerateRequest

__all__ = ["Engine"]

log = logging.getLogger(__name__)


class Engine:
    """A started vLLM engine plus what jobs need around it.

    Start one with ``await Engine.start()`` (configured from the environment, see ``config``); it is meant to be
    a handler's setup hook, so ``job.state`` is the Engine. The engine shuts down at process exit, or earlier
    with ``shutdown()``.

    ``llm`` is vLLM's ``AsyncLLM`` for anything this adapter does not wrap.
    """

    def __init__(self, llm: AsyncLLM, config: EngineConfig, stats: EngineStats) -> None:
        self._llm: AsyncLLM | None = llm
        self.config = config
        self.stats = stats
        self.openai = OpenAIServing(llm, config.served_model_name, config.model)
        self._close_lock = threading.Lock()
        # The loop the engine's sockets live on, for closing them from another thread at shutdown.
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def start(cls, config: EngineConfig | None = None) -> Engine:
        """Build and start the engine (30-50 s for the tiny model on two CPU cores; longer for real weights).

        The blocking parts run in a thread, so the event loop keeps answering health checks meanwhile.
        """
        config = EngineConfig.from_env() if config is None else config
        if config.tiny:
            log.warning(
                "MODEL_NAME is not set: serving the TINY RANDOM-WEIGHT test model from %s. "
                "It writes gibberish. Set MODEL_NAME=<hub id or local path> to serve a real model.",
                config.model,
            )
            await asyncio.to_thread(ensure_tiny_model, config.model)
        stats = EngineStats()
        args = AsyncEngineArgs(**config.engine_kwargs)
        log.info("starting vLLM engine for %s", config.model)
        llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args, stat_loggers=[stats.logger_factory])
        engine = cls(llm, config, stats)
        atexit.register(_shutdown_at_exit, weakref.ref(engine))
        log.info("vLLM engine ready, serving %s as %r", config.model, config.served_model_name)
        return engine

    def shutdown(self) -> None:
        """Stop the engine and its worker processes (about 5 s). Safe to call more than once."""
        with self._close_lock:
            llm, self._llm = self._llm, None
        if llm is None:
            return
        # Ours are then the last references, so the AsyncLLM is freed as soon as the collector runs.
        self.openai.close()
        llm.shutdown()
        _close_client_context(llm, self._loop)

    @property
    def llm(self) -> AsyncLLM:
        """vLLM's ``AsyncLLM``; InfrastructureError once the engine is shut down."""
        if self._llm is None:
            raise InfrastructureError("the vLLM engine is shut down")
        return self._llm

    @property
    def closed(self) -> bool:
        return self._llm is None

    def unfinished(self) -> int:
        """Requests the engine has accepted and not yet finished (aborted ones included once aborted)."""
        return int(self.llm.get_num_unfinished_requests())

    def metrics(self) -> dict[str, Any]:
        """The engine-wide stream-item metrics (throughput, KV cache usage, running and pending requests)."""
        return self.stats.snapshot(self.unfinished())

    def generate(self, request: GenerateRequest, request_id: str) -> AsyncIterator[Chunk | Final]:
        """Run one generation request: ``Chunk`` items when it streams, then always one ``Final`` with
        ``{"text": [...], "input_tokens": n, "output_tokens": m}``. See ``stream.generate``."""
        return stream.generate(self, request, request_id)


def _shutdown_at_exit(ref: weakref.ref[Engine]) -> None:
    engine = ref()
    if engine is None:
        return
    engine.shutdown()
    del engine
    # AsyncLLM.__del__ shuts down again. Let it run now, while modules are intact: during interpreter teardown it
    # fails on half-cleared module globals and prints a traceback after a clean shutdown.
    gc.collect()


def _close_client_context(llm: AsyncLLM, loop: asyncio.AbstractEventLoop) -> None:
    """Close the ZMQ context of vLLM's engine client, which vLLM 0.32's shutdown leaves open.

    Left open, it is torn down whenever the garbage collector gets to it, with a ResourceWarning. Its sockets
    are closed on the event loop (vLLM schedules that when shutdown runs in another thread), so the context is
    destroyed there too, after them.
    """
    resources = getattr(getattr(llm, "engine_core", None), "resources", None)
    ctx = getattr(resources, "ctx", None)
    if ctx is None or getattr(ctx, "closed", True):
        return
    try:
        in_loop = asyncio.get_running_loop() is loop
    except RuntimeError:
        in_loop = False
    if in_loop or loop.is_closed() or not loop.is_running():
        ctx.destroy(linger=0)
    else:
        loop.call_soon_threadsafe(ctx.destroy, 0)
