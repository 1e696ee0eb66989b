"""``python -m handler_sdk.serve [TARGET] [options]``: the whole endpoint API on localhost."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TextIO

from .. import codec, loop
from ..collector import tune_collector
from ..errors import BadRequest, ConfigError, StoreError
from ..loader import load_handler
from ..logs import configure_logging
from .oneshot import run_once
from .reload import start_reloader
from .server import ServeConfig, Server
from .state.broker import BrokerConfig

log = logging.getLogger("handler_sdk.serve")
# The GIL switch interval in serve (see main).
SWITCH_INTERVAL_S = 0.0005


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m handler_sdk.serve", description=__doc__)
    p.add_argument("target", nargs="?", help="path/to/file.py, package.module, or either with :function")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--endpoint-id", default="local")
    p.add_argument("--api-key", default=os.environ.get("HANDLER_SDK_API_KEY"),
                   help="require Authorization: Bearer KEY (env HANDLER_SDK_API_KEY)")  # fmt: skip
    p.add_argument("--webhook-secret", default=os.environ.get("HANDLER_SDK_WEBHOOK_SECRET"),
                   help="whsec_... base64 secret that signs webhooks (env HANDLER_SDK_WEBHOOK_SECRET)")  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=Path(".handler_sdk"), help="where the SQLite job journal lives")
    p.add_argument(
        "--store",
        default=os.environ.get("HANDLER_SDK_STORE", "sqlite"),
        help="sqlite (default: this process, journal in --data-dir) or redis://HOST:PORT/DB (shared by "
        "any number of serve replicas) [env HANDLER_SDK_STORE]",
    )
    p.add_argument(
        "--replica-id",
        default=os.environ.get("HANDLER_SDK_REPLICA_ID"),
        help="this replica's name in its workers' ids with a Redis store (default: host-pid) "
        "[env HANDLER_SDK_REPLICA_ID]",
    )
    p.add_argument("--no-rate-limits", action="store_true", help="turn off the SEED.md rate limits")
    p.add_argument("--no-metrics", action="store_true", help="turn off GET /metrics (Prometheus)")
    p.add_argument("--workers", type=int, default=0, help="run N worker subprocesses over HTTP instead of in-process")
    p.add_argument("--run-retention-ms", type=int, default=30 * 60 * 1000)
    p.add_argument("--sync-retention-ms", type=int, default=60 * 1000)
    p.add_argument(
        "--max-retained-mb",
        type=float,
        default=float(os.environ.get("HANDLER_SDK_MAX_RETAINED_MB", "1024")),
        help="memory for finished jobs in their retention; past it the oldest live only in the SQLite journal "
        "and are read back from it (default 1024) [env HANDLER_SDK_MAX_RETAINED_MB]",
    )
    p.add_argument("--lease-ms", type=int, default=30_000, help="a remote worker silent this long is gone")
    p.add_argument("--max-attempts", type=int, default=3, help="tries before a job lost with its worker fails")
    p.add_argument("--hold-s", type=float, default=3.0, help="how long an empty job-take or job-stop is held open")
    p.add_argument("--drain-timeout", type=float, default=30.0, help="seconds running jobs get on shutdown")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a new connection gets to send its request headers")  # fmt: skip
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds a request body gets to arrive (408)")
    p.add_argument("--idle-timeout", type=float, default=75.0, help="seconds an idle keep-alive connection stays open")
    p.add_argument("--test-input", nargs="?", const="", metavar="JSON",
                   help='run one job (e.g. \'{"input": {...}}\'; no value: test_input.json beside TARGET), '
                   "print its final JSON and exit 0 if it completed, else 1")  # fmt: skip
    p.add_argument("--reload", action="store_true",
                   help="restart the worker on new code when TARGET's files change (needs watchfiles)")  # fmt: skip
    p.add_argument("--log-level", default=None)
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> int:
    if args.reload and (not args.target or args.workers):
        raise ConfigError("--reload needs a TARGET and the in-process worker (no --workers)")
    if args.reload:
        sys.dont_write_bytecode = True  # see Reloader: no .pyc may stand in for a newer save
    h = load_handler(args.target) if args.target else None
    cfg = ServeConfig(
        host=args.host, port=args.port, endpoint_id=args.endpoint_id, api_key=args.api_key or None,
        data_dir=args.data_dir, rate_limits=not args.no_rate_limits, workers=args.workers, target=args.target,
        broker=BrokerConfig(run_retention_ms=args.run_retention_ms, sync_retention_ms=args.sync_retention_ms,
                            lease_ms=args.lease_ms, max_attempts=args.max_attempts,
                            max_retained_bytes=int(args.max_retained_mb * (1 << 20))),
    )  # fmt: skip
    if not args.max_retained_mb >= 0:
        raise ConfigError(f"--max-retained-mb must be a number of MiB >= 0, not {args.max_retained_mb}")
    cfg.worker.drain_timeout_s = args.drain_timeout
    cfg.take_hold_s = args.hold_s
    cfg.webhook_secret = args.webhook_secret or None
    for name in ("header_timeout", "body_timeout", "idle_timeout"):
        value = getattr(args, name)
        if not value > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a number of seconds > 0, not {value}")
        setattr(cfg, f"{name}_s", value)
    cfg.metrics = not args.no_metrics
    cfg.store = args.store
    cfg.replica_id = args.replica_id or None
    if args.workers and h is None:
        raise ConfigError("--workers needs a TARGET for the workers to load")
    server = Server(cfg, None if args.workers else h)
    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(sig, server.stopped.set)
    tune_collector()
    reloader = start_reloader(server, args.target) if args.reload else None
    await server.start()
    log.info("event loop: %s", type(running).__module__.partition(".")[0])
    print(f"handler_sdk endpoint ready: {server.url}", flush=True)
    try:
        await server.stopped.wait()
    finally:
        log.info("shutting down")
        if reloader is not None:
            reloader.cancel()
        await server.close()
    return server.exit_code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    try:
        if args.test_input is not None:
            if not args.target:
                raise ConfigError("--test-input needs a TARGET")
            raw = args.test_input or _test_input_file(args.target).read_text()
            out = _stdout_for_the_result()
            return loop.run(run_once(load_handler(args.target), codec.loads_request(raw.encode()), out))
        # The journal writer thread holds the GIL while it binds rows; each time the event loop gives the GIL up
        # (every socket write and poll), it then waits up to the switch interval to get it back. At the default
        # 5 ms a drain spent a fifth of the loop's time waiting so (py-spy: in aiohttp's socket write).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        return loop.run(_serve(args))
    except (ConfigError, BadRequest, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _stdout_for_the_result() -> TextIO:
    """Keep standard output for the job's JSON alone, so ``| jq`` works: everything else written there (the
    handler's prints, a library's log handler bound to stdout, output at exit, C code) goes to stderr instead."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return out


def _test_input_file(target: str) -> Path:
    """``test_input.json`` beside a handler file (or in the current folder), as runpod's local test reads it."""
    module = target.partition(":")[0]
    here = Path(module).parent if module.endswith(".py") else Path(".")
    path = here / "test_input.json"
    if not path.is_file():
        raise ConfigError(f"--test-input without a value reads {path}, which does not exist")
    return path


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
