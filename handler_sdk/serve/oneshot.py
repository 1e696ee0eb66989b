"""One-shot mode: run one job through the real runtime (broker + in-process worker), print its final JSON."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TextIO

from pydantic import ValidationError

from .. import codec
from ..errors import BadRequest
from ..handler import Handler
from ..models import JobStatus, RunRequest
from ..worker.loop import Worker
from .inprocess import InProcessTransport
from .state.broker import Broker
from .state.record import wait_terminal

__all__ = ["run_once"]


async def run_once(h: Handler, body: Any, out: TextIO = sys.stdout) -> int:
    """Run the job, write its final JSON as one line to ``out``. Exit status: 0 when it completed, 1 otherwise."""
    try:
        req = RunRequest.model_validate(body)
    except ValidationError as e:
        raise BadRequest(f'test input must look like {{"input": {{...}}}}: {e.errors()[0]["msg"]}') from None
    broker = Broker()
    r = broker.submit(req, sync=True)
    transport = InProcessTransport(broker, hold_s=0.5)
    worker = Worker(h, transport)
    task = asyncio.create_task(worker.run())
    waiter = asyncio.create_task(wait_terminal(r, float("inf"), broker.jobs))
    done, _ = await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    worker.stop()
    await asyncio.gather(task, return_exceptions=True)
    if task in done and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
    reply = r.reply()
    if r.stream:
        reply["stream"] = [codec.Fragment(i) for i in r.stream]
    out.write(codec.dumps_str(reply) + "\n")
    out.flush()
    return 0 if r.status is JobStatus.COMPLETED else 1
