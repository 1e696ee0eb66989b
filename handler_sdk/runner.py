"""Runs ONE job: input validation, the four handler kinds, timeout, streaming, and the outcome it ends with.

The runner never talks to a transport. Stream items go to an ``emit`` coroutine (the worker's stream sender,
which applies back-pressure), and the outcome is returned for the worker to report. Cancellation is the caller's:
cancelling the task that awaits ``run_job`` cancels an async handler, and abandons a sync one (its ``Job`` is
marked cancelled so it can stop early; its late result is discarded).
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from . import chunker, codec, files, storage
from .errors import HandlerError, InvalidInput, JobFailure, OutputNotSerializable, OutputTooLarge
from .handler import Handler, HandlerKind
from .job import Job
from .models import JobStatus, make_error_details
from .outputs import Chunk, Final
from .threads import ElasticPool

__all__ = [
    "DEFAULT_RESULT_CAP",
    "Emit",
    "Outcome",
    "error_details",
    "failure",
    "prepare",
    "returned",
    "run_job",
    "timed_out",
]

DEFAULT_RESULT_CAP = 20 * 1024 * 1024

# None when the item is queued and the handler may go on at once (no await per item), or an awaitable to wait on.
# An emit that is the ``emit`` method of a sink with ``emit_parts(output, metrics)`` as well (the multiplexer's
# stream) gets an async generator's tokens there, as their two encoded parts (see _put_parts).
Emit = Callable[[chunker.EncodedItem], Awaitable[None] | None]


@dataclass(slots=True)
class Outcome:
    """How a job ended, ready to report. ``output`` is serialized JSON, or None for no output."""

    status: JobStatus
    output: bytes | None = None
    error: str | None = None
    error_details: dict[str, Any] | None = None
    refresh_worker: bool = False


def error_details(exc: BaseException, *, message: str | None = None, tb: bool = True) -> dict[str, Any]:
    return make_error_details(
        type(exc).__name__,
        str(exc) if message is None else message,
        "".join(traceback.format_exception(exc)) if tb else None,
    )


def _failed(exc: BaseException, status: JobStatus = JobStatus.FAILED, *, tb: bool = True) -> Outcome:
    details = error_details(exc, tb=tb)
    return Outcome(status, error=f"{details['error_type']}: {details['error_message']}", error_details=details)


def _validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "input"
        parts.append(f"{loc}: {err['msg']}")
    return "invalid input: " + "; ".join(parts)


def prepare(h: Handler, job: Job) -> Any:
    """Validate the input; returns what the function is called with (for a batched handler: this job's item)."""
    if h.input_model is None:
        return job
    try:
        model: BaseModel = h.input_model.model_validate(job.input)
    except ValidationError as e:
        raise InvalidInput(_validation_message(e)) from e
    if h.takes_model:
        return model
    job.input = model
    return job


def _encode_result(value: Any, cap: int) -> bytes:
    data = codec.dumps(value)
    if len(data) > cap:
        raise OutputTooLarge(f"output is {len(data)} bytes serialized, over the {cap}-byte result cap")
    return data


async def _encode_slow(value: Any, cap: int, job_id: str) -> bytes:
    """What ``_encode_result`` refused: an output with Files in it, or one over the cap (offloaded to the bucket
    when one is configured). Only here does a job pay for either."""
    try:
        data = codec.dumps(value)
    except OutputNotSerializable:
        if not storage.has_files(value):
            raise
        data = codec.dumps(await storage.resolve(value, job_id, cap))
    if len(data) > cap:
        return await storage.offload(data, job_id, cap)
    return data


async def _encode_final(value: Any, cap: int, job_id: str) -> bytes:
    try:
        return _encode_result(value, cap)
    except (OutputNotSerializable, OutputTooLarge):
        return await _encode_slow(value, cap, job_id)


def _error_value(value: Any) -> str:
    return value if isinstance(value, str) else codec.dumps_str(value)


class _Finished(Exception):
    """Internal: a generator yielded Final."""

    def __init__(self, output: Any) -> None:
        self.output = output


Publish = Callable[[Any], Awaitable[None] | None]


async def _drive_sync(gen: Any, pool: ElasticPool, publish: Publish) -> Any:
    try:
        while True:
            if (wait := publish(await pool.run(_step, gen))) is not None:
                await wait
    except _Returned as r:
        return r.value
    finally:
        # A cancel or timeout can land while next() still runs in its thread; closing it then would raise
        # "generator already executing" over the cancel. That generator is abandoned with its thread instead.
        if not gen.gi_running:
            gen.close()


async def _encode_files(
    value: Any, metrics: dict[str, Any] | None, job_id: str, refused: OutputNotSerializable
) -> chunker.Encoded:
    """A yield that orjson refused: fine if what it refused was Files (uploaded or inlined first)."""
    if not storage.has_files(value):
        raise refused
    return chunker.encode(await storage.resolve(value, job_id, chunker.MAX_ITEM_OUTPUT), metrics)


async def _publish_all(items: list[chunker.EncodedItem], emit: Emit, aggregate: list[bytes] | None) -> None:
    for item in items:
        if (wait := emit(item)) is not None:
            await wait
        if aggregate is not None:
            aggregate.append(item.output)


async def _publish_files(
    value: Any,
    metrics: dict[str, Any] | None,
    job_id: str,
    refused: OutputNotSerializable,
    *,
    emit: Emit,
    aggregate: list[bytes] | None,
) -> None:
    encoded = await _encode_files(value, metrics, job_id, refused)
    await _publish_all(encoded if isinstance(encoded, list) else [encoded], emit, aggregate)


async def _stream(
    h: Handler, arg: Any, pool: ElasticPool, emit: Emit, aggregate: list[bytes] | None, *, job_id: str
) -> Any:
    """Drive a generator; returns the output it set with Final (or a sync generator's return value)."""

    def publish(value: Any) -> Awaitable[None] | None:
        if isinstance(value, dict) and "error" in value:
            raise HandlerError(_error_value(value["error"]))
        metrics = None
        if isinstance(value, Chunk):
            value, metrics = value.output, value.metrics
        elif isinstance(value, Final):
            raise _Finished(value.output)
        # Encoded here, at the yield: a dict mutated after its yield is sent as it was, and a value orjson cannot
        # encode fails the job at this yield. One item is the common case; only a long string comes as pieces.
        try:
            encoded = chunker.encode(value, metrics)
        except OutputNotSerializable as e:
            return _publish_files(value, metrics, job_id, e, emit=emit, aggregate=aggregate)
        if isinstance(encoded, list):
            return _publish_all(encoded, emit, aggregate)
        wait = emit(encoded)
        if aggregate is not None:
            aggregate.append(encoded.output)
        return wait

    try:
        if h.kind is not HandlerKind.ASYNC_GEN:
            return await _drive_sync(h.fn(arg), pool, publish)
        # In a task of its own, whose coroutine is one frame: each engine step then resumes that frame alone, not
        # every frame of the job's task as well (the worker's, run_job's, _call's, this one: ~0.25 µs a wake-up,
        # and at 256 streams each token is a wake-up). Cancelling the job's task cancels the task it awaits, so
        # a timeout or a stop reaches the handler as before.
        await asyncio.get_running_loop().create_task(_pump(h.fn(arg), publish, emit, aggregate))
        return None
    except _Finished as f:
        return f.output


def _put_parts(emit: Emit) -> Callable[[bytes, bytes | None], Awaitable[None] | None]:
    """How ``_pump`` hands over an item's two encoded parts: an ``emit`` that is the ``emit`` method of a sink
    that also has ``emit_parts`` (the multiplexer's stream) takes them there, with no EncodedItem between; any
    other emit gets its EncodedItem. The same items either way, in the same order."""
    sink = getattr(emit, "__self__", None)
    put = getattr(sink, "emit_parts", None)
    if put is not None and getattr(emit, "__func__", None) is getattr(type(sink), "emit", None):
        return cast("Callable[[bytes, bytes | None], Awaitable[None] | None]", put)

    def item(output: bytes, metrics: bytes | None) -> Awaitable[None] | None:
        return emit(chunker.EncodedItem(output, metrics))

    return item


async def _pump(agen: Any, publish: Publish, emit: Emit, aggregate: list[bytes] | None) -> None:
    """An async generator's items, each through ``publish``; a Chunk or a string goes through publish's own
    steps written out here, one call fewer per token (the values publish refuses are neither)."""
    encode = chunker.encode_parts
    put = _put_parts(emit)
    try:
        async for value in agen:
            t = type(value)
            if t is Chunk:
                out, metrics = value.output, value.metrics
            elif t is str:
                out, metrics = value, None
            else:
                if (wait := publish(value)) is not None:
                    await wait
                continue
            try:
                encoded = encode(out, metrics)
            except OutputNotSerializable:
                wait = publish(value)  # Files, or the error publish raises
            else:
                if type(encoded) is tuple:
                    data, m = encoded
                    wait = put(data, m)
                    if aggregate is not None:
                        aggregate.append(data)
                else:
                    wait = _publish_all(cast("list[chunker.EncodedItem]", encoded), emit, aggregate)
            if wait is not None:
                await wait
    finally:
        await agen.aclose()


class _Returned(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


def _step(gen: Any) -> Any:
    try:
        return next(gen)
    except StopIteration as e:
        raise _Returned(e.value) from None


async def _call(h: Handler, job: Job, pool: ElasticPool, emit: Emit, cap: int) -> Outcome:
    arg = prepare(h, job)
    if h.kind.streams:
        aggregate: list[bytes] | None = [] if h.aggregate_stream else None
        final = await _stream(h, arg, pool, emit, aggregate, job_id=job.id)
        if final is not None:
            return Outcome(JobStatus.COMPLETED, output=await _encode_final(final, cap, job.id))
        if aggregate is None:
            return Outcome(JobStatus.COMPLETED)
        body = b"[" + b",".join(aggregate) + b"]"
        if len(body) > cap:
            body = await storage.offload(body, job.id, cap, "aggregated output")
        return Outcome(JobStatus.COMPLETED, output=body)
    value = await (pool.run(h.fn, arg) if h.kind is HandlerKind.SYNC else h.fn(arg))
    return returned_now(value, cap) or await returned(value, cap, job.id)


def _without_refresh(value: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A returned dict without its ``refresh_worker`` key (nor a null ``error``), and whether it asked for one."""
    value = dict(value)
    refresh = bool(value.pop("refresh_worker"))
    value.pop("error", None)
    return value, refresh


def returned_now(value: Any, cap: int) -> Outcome | None:
    """``returned`` without its waits, for most values: None when the output needs its slow path (Files in it, or
    over the cap)."""
    refresh = False
    if isinstance(value, dict):
        if "error" in value and value["error"] is not None:
            raise HandlerError(_error_value(value["error"]))
        if "refresh_worker" in value:
            value, refresh = _without_refresh(value)
    if value is None:
        return Outcome(JobStatus.COMPLETED, refresh_worker=refresh)
    try:
        return Outcome(JobStatus.COMPLETED, output=_encode_result(value, cap), refresh_worker=refresh)
    except (OutputNotSerializable, OutputTooLarge):
        return None


async def returned(value: Any, cap: int, job_id: str) -> Outcome:
    """The outcome of a value a handler returned for one job; raises JobFailure for ``{"error": ...}``, an output
    orjson cannot encode, or one over the cap (that the bucket cannot take either)."""
    out = returned_now(value, cap)
    if out is not None:
        return out
    refresh = False
    if isinstance(value, dict) and "refresh_worker" in value:  # (its error is None: returned_now raised on one)
        value, refresh = _without_refresh(value)
    return Outcome(JobStatus.COMPLETED, output=await _encode_slow(value, cap, job_id), refresh_worker=refresh)


async def run_job(
    h: Handler,
    job: Job,
    *,
    emit: Emit,
    pool: ElasticPool,
    timeout: float | None = None,
    result_cap: int = DEFAULT_RESULT_CAP,
) -> Outcome:
    """Run one job to its outcome. ``timeout`` (seconds) is the tighter of the handler's and the job's."""
    cm = None if timeout is None else asyncio.timeout(timeout)
    # Downloads (files.download) go to a folder of this job's, removed when it ends.
    token = files.enter_job(job.id)
    try:
        if cm is None:
            return await _call(h, job, pool, emit, result_cap)
        async with cm:
            return await _call(h, job, pool, emit, result_cap)
    except TimeoutError as e:
        if cm is None or not cm.expired():
            return _failed(e)  # the handler's own TimeoutError, not our deadline
        job._mark_cancelled()
        assert timeout is not None  # cm exists only with a timeout
        return timed_out(timeout)
    except asyncio.CancelledError:
        job._mark_cancelled()
        raise
    except Exception as e:
        return failure(e)
    finally:
        files.leave_job(job.id, token)


def timed_out(timeout: float) -> Outcome:
    """The outcome of a job that ran past its execution timeout (``timeout`` seconds)."""
    return _failed(TimeoutError(f"job exceeded its {timeout:g} s execution timeout"), JobStatus.TIMED_OUT, tb=False)


def failure(exc: Exception) -> Outcome:
    """The FAILED outcome of an exception the handler raised (or returned, for a batched handler)."""
    if isinstance(exc, JobFailure):
        # Our own verdicts (bad input, too large, error by value) need no traceback of SDK internals.
        return _failed(exc, tb=exc.__cause__ is not None and not isinstance(exc, InvalidInput))
    return _failed(exc)
