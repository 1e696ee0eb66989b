"""Logging for the command-line entry points: plain lines on a terminal, JSON lines in a container.

``HANDLER_SDK_LOG_FORMAT=json|plain`` forces one; by default JSON is used when stderr is not a terminal and the
process looks like a container worker (``RUNPOD_POD_ID`` or ``HANDLER_SDK_WORKER_ID`` is set). JSON lines carry
``worker_id`` and, where the message names one, ``job_id``; a line logged while a job runs carries its
``traceparent`` (in plain lines too, at the end).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time

from . import codec, trace

__all__ = ["configure_logging"]

_JOB_RE = re.compile(r"\bjob ([\w-]+)")


class JsonFormatter(logging.Formatter):
    def __init__(self, worker_id: str | None) -> None:
        super().__init__()
        self.worker_id = worker_id

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        d: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": msg,
        }
        if self.worker_id:
            d["worker_id"] = self.worker_id
        job_id = getattr(record, "job_id", None)
        if job_id is None and (m := _JOB_RE.search(msg)):
            job_id = m.group(1)
        if job_id is not None:
            d["job_id"] = job_id
        if (tp := trace.current.get()) is not None:
            d["traceparent"] = tp
        if record.exc_info:
            d["exc_info"] = self.formatException(record.exc_info)
        return codec.dumps_str(d)


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tp = trace.current.get()
        return line if tp is None else f"{line} traceparent={tp}"


def configure_logging(level: str | None = None) -> None:
    fmt = os.environ.get("HANDLER_SDK_LOG_FORMAT", "").lower()
    worker_id = os.environ.get("HANDLER_SDK_WORKER_ID") or os.environ.get("RUNPOD_POD_ID")
    if fmt not in ("json", "plain"):
        fmt = "json" if worker_id and not sys.stderr.isatty() else "plain"
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker_id))
    else:
        handler.setFormatter(PlainFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("HANDLER_SDK_LOG_LEVEL") or "INFO").upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
