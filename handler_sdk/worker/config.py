"""Worker settings from the environment, runpod's names accepted as they are.

Our own names come first; each falls back to the runpod variable, so one image runs on the hosted platform and
against ``serve``:

=================================  ================================  =============================================
ours                               runpod                            meaning
=================================  ================================  =============================================
HANDLER_SDK_ENDPOINT_URL           -                                 ``http://host:port/v2/ENDPOINT``: derives the
                                                                     four URLs below
HANDLER_SDK_TAKE_URL               RUNPOD_WEBHOOK_GET_JOB            job-take, ``$ID`` = worker id
HANDLER_SDK_DONE_URL               RUNPOD_WEBHOOK_POST_OUTPUT        job-done, ``$ID`` = job id
HANDLER_SDK_STREAM_URL             RUNPOD_WEBHOOK_POST_STREAM        job-stream, ``$ID`` = job id
HANDLER_SDK_PING_URL               RUNPOD_WEBHOOK_PING               ping
HANDLER_SDK_API_KEY                RUNPOD_AI_API_KEY                 sent as ``Authorization``
HANDLER_SDK_WORKER_ID              RUNPOD_POD_ID                     ``$RUNPOD_POD_ID`` (default: host-random)
HANDLER_SDK_PING_INTERVAL_MS       RUNPOD_PING_INTERVAL              heartbeat period (ms, default 10000)
HANDLER_SDK_DRAIN_TIMEOUT_S        -                                 SIGTERM drain deadline (default 30)
HANDLER_SDK_SPOOL_DIR              -                                 undeliverable results (./.handler_sdk_spool)
HANDLER_SDK_REPORT_RETRIES         -                                 result posts before spooling (default 5)
HANDLER_SDK_BACKOFF_BASE_S         -                                 first retry delay (default 0.2)
HANDLER_SDK_BACKOFF_MAX_S          -                                 longest result retry delay (default 10)
HANDLER_SDK_TAKE_BACKOFF_MAX_S     -                                 longest job-take retry delay (default 2)
HANDLER_SDK_SPOOL_RETRY_S          -                                 how often spooled results are re-sent (2)
HANDLER_SDK_REQUEST_TIMEOUT_S      -                                 one request's limit, holds included (30)
HANDLER_SDK_LOG_FORMAT             -                                 ``json`` or ``plain`` (default: json unless a tty)
HANDLER_SDK_METRICS_PORT           -                                 Prometheus ``/metrics`` on this port (default off)
=================================  ================================  =============================================
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from yarl import URL

from ..errors import ConfigError
from .options import WorkerConfig

__all__ = ["Endpoints", "endpoints_from_env", "request_timeout_from_env", "worker_config_from_env"]


def _get(env: Mapping[str, str], *names: str) -> str | None:
    return None if (found := _lookup(env, names)) is None else found[1]


def _lookup(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    """The first of ``names`` that is set (non-empty), with its value: errors name the variable the user set."""
    for n in names:
        v = env.get(n)
        if v:
            return n, v
    return None


def _num(env: Mapping[str, str], name: str, default: float, *fallbacks: str) -> float:
    found = _lookup(env, (name, *fallbacks))
    if found is None:
        return default
    name, raw = found
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}={raw!r} must be a finite number, not negative")
    return value


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    value = _num(env, name, default)
    if value != int(value):
        raise ConfigError(f"{name}={env[name]!r} must be a whole number")
    return int(value)


@dataclass(frozen=True, slots=True)
class Endpoints:
    take: str
    done: str
    stream: str
    ping: str
    worker_id: str
    api_key: str | None = None

    def _fill(self, template: str, job_id: str | None = None) -> URL:
        s = template.replace("$RUNPOD_POD_ID", self.worker_id)
        s = s.replace("$ID", job_id if job_id is not None else self.worker_id)
        return URL(s)

    @property
    def take_url(self) -> URL:
        return self._fill(self.take)

    @property
    def take_batch_url(self) -> URL:
        return self._fill(self.take.replace("/job-take/", "/job-take-batch/"))

    @property
    def stop_url(self) -> URL:
        return self._fill(self.take.replace("/job-take/", "/job-stop/"))

    @property
    def done_batch_url(self) -> URL:
        return self._fill(self.take.replace("/job-take/", "/job-done-batch/"))

    @property
    def stream_batch_url(self) -> URL:
        return self._fill(self.take.replace("/job-take/", "/job-stream-batch/"))

    @property
    def hand_back_url(self) -> URL:
        return self._fill(self.take.replace("/job-take/", "/job-handback/"))

    @property
    def ping_url(self) -> URL:
        return self._fill(self.ping)

    def done_url(self, job_id: str) -> URL:
        return self._fill(self.done, job_id)

    def stream_url(self, job_id: str) -> URL:
        return self._fill(self.stream, job_id)


def endpoints_from_env(env: Mapping[str, str] = os.environ) -> Endpoints:
    worker_id = _get(env, "HANDLER_SDK_WORKER_ID", "RUNPOD_POD_ID") or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    key = _get(env, "HANDLER_SDK_API_KEY", "RUNPOD_AI_API_KEY")
    base = _get(env, "HANDLER_SDK_ENDPOINT_URL")
    derived: dict[str, str] = {}
    if base is not None:
        b = base.rstrip("/")
        derived = {
            "take": f"{b}/job-take/$RUNPOD_POD_ID",
            "done": f"{b}/job-done/$RUNPOD_POD_ID/$ID",
            "stream": f"{b}/job-stream/$RUNPOD_POD_ID/$ID",
            "ping": f"{b}/ping/$RUNPOD_POD_ID",
        }
    urls = {
        "take": _get(env, "HANDLER_SDK_TAKE_URL", "RUNPOD_WEBHOOK_GET_JOB") or derived.get("take"),
        "done": _get(env, "HANDLER_SDK_DONE_URL", "RUNPOD_WEBHOOK_POST_OUTPUT") or derived.get("done"),
        "stream": _get(env, "HANDLER_SDK_STREAM_URL", "RUNPOD_WEBHOOK_POST_STREAM") or derived.get("stream"),
        "ping": _get(env, "HANDLER_SDK_PING_URL", "RUNPOD_WEBHOOK_PING") or derived.get("ping"),
    }
    # The ping URL alone may be left out: it is derived from the take URL below.
    missing = [k for k, v in urls.items() if not v and k != "ping"]
    if missing:
        raise ConfigError(
            "worker endpoint not configured: set HANDLER_SDK_ENDPOINT_URL (e.g. http://127.0.0.1:8000/v2/local) "
            f"or the RUNPOD_WEBHOOK_* variables (missing: {', '.join(missing)})"
        )
    if urls["ping"] is None:
        urls["ping"] = urls["take"].replace("/job-take/", "/ping/")  # type: ignore[union-attr]
    return Endpoints(urls["take"], urls["done"], urls["stream"], urls["ping"], worker_id, key)  # type: ignore[arg-type]


def worker_config_from_env(env: Mapping[str, str] = os.environ) -> WorkerConfig:
    spool = _get(env, "HANDLER_SDK_SPOOL_DIR") or ".handler_sdk_spool"
    ping_ms = _num(env, "HANDLER_SDK_PING_INTERVAL_MS", 10_000, "RUNPOD_PING_INTERVAL")
    if ping_ms <= 0:
        raise ConfigError("the ping interval (HANDLER_SDK_PING_INTERVAL_MS / RUNPOD_PING_INTERVAL) must be > 0 ms")
    return WorkerConfig(
        ping_interval_s=ping_ms / 1000,
        drain_timeout_s=_num(env, "HANDLER_SDK_DRAIN_TIMEOUT_S", 30.0),
        report_retries=_count(env, "HANDLER_SDK_REPORT_RETRIES", 5),
        backoff_base_s=_num(env, "HANDLER_SDK_BACKOFF_BASE_S", 0.2),
        backoff_max_s=_num(env, "HANDLER_SDK_BACKOFF_MAX_S", 10.0),
        take_backoff_max_s=_num(env, "HANDLER_SDK_TAKE_BACKOFF_MAX_S", 2.0),
        spool_retry_s=_num(env, "HANDLER_SDK_SPOOL_RETRY_S", 2.0),
        spool_dir=Path(spool),
    )


def request_timeout_from_env(env: Mapping[str, str] = os.environ) -> float:
    """One worker request's time limit; it must outlast the endpoint's hold of an empty take or job-stop."""
    return _num(env, "HANDLER_SDK_REQUEST_TIMEOUT_S", 30.0) or 30.0
