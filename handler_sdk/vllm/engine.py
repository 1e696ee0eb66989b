"""The engine adapter: one vLLM ``AsyncLLM`` per worker process, its stats, and its OpenAI serving objects."""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import gc
import logging
import signal
import threading
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from vllm import AsyncEngineArgs
from vllm.v1.engine.async_llm import AsyncLLM

from ..errors import InfrastructureError, InvalidInput, WorkerDead
from . import stream
from .config import EngineConfig, ServingOptions
from .metrics import EngineStats
from .openai import OpenAIServing
from .tiny import ensure_tiny_model

if TYPE_CHECKING:
    from ..outputs import Chunk, Final
    from .inputs import GenerateRequest

__all__ = ["Engine"]

log = logging.getLogger(__name__)

# How often the watchdog looks at the engine. vLLM notices a dead EngineCore at once (a monitor thread waits on
# the process sentinel, and the core reports its own exceptions); this only bounds how soon we act on its flag.
_WATCH_S = 0.2


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
        self.serving = _serving_options(config)
        self.chat_template: str | None = self.serving.chat_template
        self.openai = OpenAIServing(
            llm, config.served_model_name, config.model, self.serving,
            lambda: self.death() if self.dead else None,
        )  # fmt: skip
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

    @property
    def dead(self) -> bool:
        """True once the engine has died (its EngineCore process exited or raised); it cannot recover."""
        llm = self._llm
        return llm is not None and bool(llm.errored)

    def death(self) -> WorkerDead:
        """The error that names how the engine died, for the jobs it takes with it."""
        return WorkerDead(f"the vLLM engine died: {self._death_cause()}")

    def _death_cause(self) -> str:
        manager = getattr(getattr(self._llm, "engine_core", None), "resources", None)
        manager = getattr(manager, "engine_manager", None)
        codes = [p.exitcode for p in getattr(manager, "processes", ()) if p.exitcode not in (None, 0)]
        if not codes:
            return "the EngineCore raised an error (its traceback is in the worker's log)"
        code = codes[0]
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (killed: out of memory, or by hand)" if -code == signal.SIGKILL else ""
            return f"its EngineCore process was killed by {name}{hint}"
        return f"its EngineCore process exited with status {code} (its traceback is in the worker's log)"

    async def until_dead(self) -> str:
        """Return once the engine has died, with the reason: the worker then fails its jobs and exits non-zero.

        An engine shut down on purpose never counts as dead; this then waits forever (until cancelled).
        """
        while not self.dead:  # noqa: ASYNC110 (vLLM sets the flag from its monitor thread: nothing to await)
            await asyncio.sleep(_WATCH_S)
        reason = str(self.death())
        log.error("%s", reason)
        return reason

    def unfinished(self) -> int:
        """Requests the engine has accepted and not yet finished (aborted ones included once aborted)."""
        return int(self.llm.get_num_unfinished_requests())

    async def lora_request(self, name: str | None) -> Any:
        """vLLM's LoRARequest for the adapter named ``name`` (one of LORA_MODULES), None for the base model."""
        if name is None:
            return None
        adapters = (await self.openai.servings()).models.lora_requests
        if name not in adapters:
            known = ", ".join(sorted(adapters)) or "none (set LORA_MODULES)"
            raise InvalidInput(f"lora: no adapter named {name!r}; loaded: {known}")
        return adapters[name]

    def metrics(self) -> dict[str, Any]:
        """The engine-wide stream-item metrics (throughput, KV cache usage, running and pending requests)."""
        return self.stats.snapshot(self.unfinished())

    def generate(self, request: GenerateRequest, request_id: str) -> AsyncIterator[Chunk | Final]:
        """Run one generation request: ``Chunk`` items when it streams, then always one ``Final`` with
        ``{"text": [...], "input_tokens": n, "output_tokens": m}``. See ``stream.generate``."""
        return stream.generate(self, request, request_id)


def _serving_options(config: EngineConfig) -> ServingOptions:
    """The front-end options with vLLM's types: the chat template read (path or text), adapters as paths."""
    from vllm.entrypoints.openai.models.protocol import LoRAModulePath
    from vllm.renderers.chat_utils import load_chat_template

    o = config.serving
    template = load_chat_template(o.chat_template) if o.chat_template else None
    loras = tuple(LoRAModulePath(m.name, m.path, m.base_model_name) for m in o.lora_modules)
    return dataclasses.replace(o, chat_template=template, lora_modules=loras)


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
