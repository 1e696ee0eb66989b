"""``python -m handler_sdk.worker TARGET``: pull jobs from an endpoint over the worker protocol.

Configured from env vars (see handler_sdk.worker.config). SIGTERM drains: no new jobs, running ones get until the
drain deadline, then the rest are handed back. Exit status: 0 after a drain or a ``refresh_worker``, 1 when the
setup hook fails or the process is declared dead (WorkerDead: its engine died), 2 on bad configuration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from .. import loop as event_loop
from ..collector import tune_collector
from ..errors import ConfigError, NotEnabled, SetupError, WorkerDead
from ..handler import Handler
from ..loader import load_handler
from ..logs import configure_logging
from .config import endpoints_from_env, request_timeout_from_env, worker_config_from_env
from .http import HttpTransport
from .loop import Worker
from .metrics import MeteredTransport, metrics_port_from_env, start_exporter
from .transport import Transport

log = logging.getLogger("handler_sdk.worker")


async def _run(h: Handler, *, handle_signals: bool = True) -> int:
    endpoints = endpoints_from_env()
    port = metrics_port_from_env(os.environ)
    transport: Transport = HttpTransport(endpoints, request_timeout_s=request_timeout_from_env())
    exporter = None
    if port is not None:  # HANDLER_SDK_METRICS_PORT: Prometheus /metrics (the metrics extra)
        try:
            metered = MeteredTransport(transport)
        except NotEnabled as e:
            await transport.close()
            raise ConfigError(f"HANDLER_SDK_METRICS_PORT is set but {e.message}") from None
        exporter, _ = await start_exporter(metered.exporter, port, endpoints.api_key)
        transport = metered
    worker = Worker(h, transport, worker_config_from_env())
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
    loop_module = type(asyncio.get_running_loop()).__module__.partition(".")[0]
    log.info(
        "worker %s starting (%s, concurrency %d, %s loop)", transport.worker_id, h.name, h.concurrency, loop_module
    )
    tune_collector()
    try:
        await worker.run()
    except (SetupError, WorkerDead) as e:
        log.error("%s", e)
        return 1
    finally:
        await transport.close()
        if exporter is not None:
            await exporter.cleanup()
    log.info("worker %s stopped%s", transport.worker_id, " for refresh_worker" if worker.refresh else "")
    return 0


def run_worker(target: object = None, *, handle_signals: bool = True) -> int:
    """Load ``target`` (a TARGET string or a Handler) and run the worker until it drains."""
    configure_logging()
    try:
        if isinstance(target, Handler):
            h = target
        elif isinstance(target, str):
            h = load_handler(target)
        else:
            raise ConfigError("usage: python -m handler_sdk.worker TARGET  (path/to/file.py, module, module:function)")
        return event_loop.run(_run(h, handle_signals=handle_signals))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def main() -> int:
    return run_worker(sys.argv[1] if len(sys.argv) > 1 else None)


if __name__ == "__main__":
    sys.exit(main())
