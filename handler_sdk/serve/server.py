"""Puts the endpoint together: store, broker, routes, and the workers that feed on it.

With a handler and ``workers == 0`` one Worker runs in this process over the direct transport (the fast default);
with ``workers = N`` it starts N ``python -m handler_sdk.worker`` subprocesses that attach over HTTP; with no
handler the endpoint is a pure queue for external workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..errors import ConfigError, SetupError, WorkerDead
from ..handler import Handler
from ..runner import DEFAULT_RESULT_CAP
from ..threads import ElasticPool
from ..worker.loop import Worker, WorkerConfig
from .http.client import ClientLimits, add_client_routes
from .http.dashboard import add_dashboard_routes
from .http.finishes import Finishes
from .http.metrics import add_metrics_route
from .http.openai import add_openai_routes
from .http.openapi import add_openapi_routes
from .http.router import Routes
from .http.web import BODY_TIMEOUT
from .http.workers import add_worker_routes
from .inprocess import InProcessTransport, StateTransport
from .state.api import JobState
from .state.broker import Broker, BrokerConfig
from .state.limits import RateLimiter
from .state.local import LocalState
from .state.redis_limits import RedisRateLimiter
from .state.redis_records import RedisJobsConfig
from .state.redis_state import RedisState
from .state.store import JobStore
from .webhooks import Webhooks

__all__ = ["ServeConfig", "Server"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    endpoint_id: str = "local"
    api_key: str | None = None
    data_dir: Path | None = Path(".handler_sdk")
    rate_limits: bool = True
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    client: ClientLimits = field(default_factory=ClientLimits)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    take_hold_s: float = 3.0
    result_cap: int = DEFAULT_RESULT_CAP
    workers: int = 0
    target: str | None = None  # what subprocess workers load
    webhook_attempts: int = 6
    webhook_backoff_s: float = 1.0
    # whsec_-prefixed base64: signs every webhook (Standard Webhooks); None sends them unsigned.
    webhook_secret: str | None = None
    # Slow or stalled clients (slowloris): a connection must send its first request's headers within
    # header_timeout_s and each body within body_timeout_s; a kept-alive connection idle for idle_timeout_s closes.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 75.0
    metrics: bool = True  # /metrics, when prometheus-client is installed
    dashboard_events_s: float = 300.0  # how long one /dashboard/events reply streams before the page reconnects
    # "sqlite" (the default: memory plus the journal in data_dir) or "redis://HOST:PORT/DB" (shared by replicas).
    store: str = "sqlite"
    # This process's name among the replicas of a Redis store, in its workers' ids; None: host and pid.
    replica_id: str | None = None


class _HeaderDeadline:
    """The protocol factory aiohttp serves connections with, plus a deadline for each connection's first request
    headers (aiohttp has none: a client that sends half a request line would hold its connection for good)."""

    def __init__(self, factory: Any, timeout_s: float) -> None:
        self.factory = factory
        self.timeout_s = timeout_s

    def __call__(self) -> RequestHandler:
        handler: RequestHandler = self.factory()
        asyncio.get_running_loop().call_later(self.timeout_s, _close_if_no_request, handler)
        return handler


def _close_if_no_request(handler: RequestHandler) -> None:
    # _request_count counts requests whose headers were parsed on this connection (0: none completed yet).
    if getattr(handler, "_request_count", 1) == 0 and handler.transport is not None:
        handler.force_close()


class _Runner(web.AppRunner):
    """An AppRunner whose sites serve connections through ``_HeaderDeadline``."""

    __slots__ = ("header_timeout_s",)

    def __init__(self, app: web.Application, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s

    @property
    def server(self) -> Any:
        inner = super().server
        return None if inner is None else _HeaderDeadline(inner, self.header_timeout_s)


class Server:
    def __init__(self, cfg: ServeConfig, h: Handler | None = None) -> None:
        self.cfg = cfg
        self.h = h
        self.broker: Broker | None = None
        self.state: JobState
        if cfg.store == "sqlite":
            store = JobStore(cfg.data_dir / "jobs.sqlite3", endpoint_id=cfg.endpoint_id) if cfg.data_dir else None
            self.broker = Broker(store, cfg.broker)
            self.state = LocalState(self.broker)
            self.replica = ""
        elif cfg.store.startswith(("redis://", "rediss://", "unix://")):
            names = {f.name for f in fields(RedisJobsConfig)}  # the bound on retained jobs is the broker's alone
            rcfg = RedisJobsConfig(
                **{f.name: getattr(cfg.broker, f.name) for f in fields(cfg.broker) if f.name in names}
            )
            self.state = RedisState(cfg.store, cfg.endpoint_id, rcfg)
            self.replica = cfg.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        else:
            raise ConfigError(f"--store must be sqlite or redis://HOST:PORT/DB, not {cfg.store!r}")
        self.webhooks = Webhooks(
            attempts=cfg.webhook_attempts, backoff_s=cfg.webhook_backoff_s, secret=cfg.webhook_secret
        )
        if self.broker is not None:
            self.state.on_terminal.append(self.webhooks.on_terminal)
            self.state.on_event.append(self.webhooks.on_event)
        self.worker: Worker | None = None
        self.exit_code = 0
        self.stopped = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._procs: list[asyncio.subprocess.Process] = []
        self._closing = False
        self.pool = ElasticPool()
        self.port = cfg.port

    def build_app(self) -> web.Application:
        limiter: RateLimiter | RedisRateLimiter | None = None
        if self.cfg.rate_limits:
            # The window shared by every replica of a Redis store; in memory with SQLite.
            s = self.state
            limiter = RedisRateLimiter(s.client, self.cfg.endpoint_id) if isinstance(s, RedisState) else RateLimiter()
        app = web.Application(client_max_size=self.cfg.result_cap + (2 << 20))
        app[BODY_TIMEOUT] = self.cfg.body_timeout_s
        routes = Routes(app, self.cfg.endpoint_id, self.cfg.api_key, limiter)
        add_client_routes(routes, self.state, self.cfg.client)
        add_worker_routes(routes, self.state, hold_s=self.cfg.take_hold_s, result_cap=self.cfg.result_cap)
        add_openai_routes(routes, self.state)
        # What each finished job adds to /metrics and the dashboard: one on_terminal hook for both.
        finishes = Finishes()
        self.state.on_terminal.append(finishes.on_terminal)
        add_metrics_route(routes, self.state, finishes, limiter, self.cfg.metrics)
        add_openapi_routes(routes, self.h.input_model if self.h is not None else None, self.cfg.client)
        add_dashboard_routes(routes, self.state, finishes.history, events_s=self.cfg.dashboard_events_s)
        routes.finish()
        return app

    @property
    def local_worker_id(self) -> str:
        """The in-process worker's id: "local" on SQLite, "<replica>-local" on a store shared by replicas."""
        return f"{self.replica}-local" if self.replica else "local"

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}/v2/{self.cfg.endpoint_id}"

    async def start(self) -> None:
        await self.state.open()
        if isinstance(self.state, RedisState) and self.h is not None and self.cfg.workers == 0:
            # Registered before the first request: the worker's own first ping is a Redis round trip after its task
            # starts, and /health must not miss it meanwhile (the default store sees it at once).
            setup = self.h.setup is not None or bool(self.h.checks)
            await self.state.ping(self.local_worker_id, initializing=setup)
        self._runner = _Runner(
            self.build_app(), self.cfg.header_timeout_s, access_log=None, handle_signals=False,
            keepalive_timeout=self.cfg.idle_timeout_s,
        )  # fmt: skip
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port, reuse_address=True)
        await site.start()
        if self.cfg.port == 0:
            self.port = self._runner.addresses[0][1]
        self._tasks.append(asyncio.create_task(self.state.run_clock(), name="broker-clock"))
        if isinstance(self.state, RedisState):
            hooks = self.state.deliver_hooks(self.webhooks.send_completed, self.webhooks.lease_ms())
            self._tasks.append(asyncio.create_task(hooks, name="webhook-outbox"))
        if self.h is not None and self.cfg.workers == 0:
            self._tasks.append(asyncio.create_task(self._local_worker(), name="local-worker"))
        for i in range(self.cfg.workers):
            self._tasks.append(asyncio.create_task(self._subprocess_worker(i), name=f"worker-{i}"))
        log.info("endpoint %s listening on %s", self.cfg.endpoint_id, self.url)

    async def _local_worker(self) -> None:
        assert self.h is not None
        while not self._closing:
            transport: InProcessTransport | StateTransport
            if self.broker is not None:
                transport = InProcessTransport(self.broker, self.local_worker_id, hold_s=self.cfg.take_hold_s)
            else:
                transport = StateTransport(self.state, self.local_worker_id, hold_s=self.cfg.take_hold_s)
            # The endpoint's result cap binds its own worker too (the tighter of the two wins).
            wcfg = replace(self.cfg.worker, result_cap=min(self.cfg.worker.result_cap, self.cfg.result_cap))
            if self.broker is None:
                # Its lease is renewed by its pings: three per lease, so a short --lease-ms never lapses a live one.
                wcfg.ping_interval_s = min(wcfg.ping_interval_s, self.cfg.broker.lease_ms / 3000)
            self.worker = Worker(self.h, transport, wcfg, pool=self.pool)
            try:
                await self.worker.run()
            except SetupError as e:
                log.error("%s; the worker cannot start, exiting (queued jobs stay queued)", e)
                self.exit_code = 1
                self.stopped.set()
                return
            except WorkerDead as e:
                log.error("the worker died (%s); exiting (its running jobs failed, queued jobs stay queued)", e)
                self.exit_code = 1
                self.stopped.set()
                return
            finally:
                await transport.close()
            if not self.worker.refresh:
                return
            log.info("starting a fresh worker (refresh_worker or --reload; setup runs again)")

    def swap_handler(self, h: Handler) -> int:
        """Run ``h`` from now on (``--reload``): the in-process worker stops at once, handing its jobs back (they
        run again on the new code; a hand-back is not a retry), and a fresh one starts on ``h``. The broker, so
        the queue and the finished records, stays. Returns how many jobs were handed back."""
        self.h = h
        w = self.worker
        if w is None:
            return 0
        w.cfg.drain_timeout_s = 0
        w.refresh = True  # _local_worker then starts the next worker, on self.h
        w.stop()
        return len(w.running)

    async def _subprocess_worker(self, i: int) -> None:
        env = dict(os.environ)
        env.update(
            HANDLER_SDK_ENDPOINT_URL=self.url,
            HANDLER_SDK_WORKER_ID=f"{self.replica}-worker-{i}" if self.replica else f"worker-{i}",
            HANDLER_SDK_SPOOL_DIR=str((self.cfg.data_dir or Path(".")) / f"spool-worker-{i}"),
        )
        if self.cfg.api_key:
            env["HANDLER_SDK_API_KEY"] = self.cfg.api_key
        assert self.cfg.target is not None
        delay = 0.5
        while not self._closing:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "handler_sdk.worker", self.cfg.target, env=env
            )
            self._procs.append(proc)
            rc = await proc.wait()
            self._procs.remove(proc)
            if self._closing:
                return
            log.warning("worker-%d exited with %d; restarting in %.1fs", i, rc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30) if rc != 0 else 0.5

    async def close(self) -> None:
        """Drain the in-process worker, stop subprocess workers, then stop serving and close the journal."""
        self._closing = True
        if self.worker is not None:
            self.worker.stop()
        for p in self._procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        drain = self.cfg.worker.drain_timeout_s + 5
        self.state.stop()
        for t in self._tasks:
            if t.get_name() in ("broker-clock", "webhook-outbox"):
                t.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain):
                await asyncio.gather(*self._tasks, return_exceptions=True)
        for t in self._tasks:
            t.cancel()
        for p in self._procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.webhooks.close()
        await self.state.close()
        self.pool.shutdown()
