"""The @handler decorator (options, kind detection, typed input) and the Job a handler receives."""

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from handler_sdk import ConfigError, Handler, HandlerKind, Job, handler


class Item(BaseModel):
    name: str


def sync_fn(job: Any) -> Any:
    return {"sync": job}


async def async_fn(job: Any) -> Any:
    return {"async": job}


def sync_gen_fn(job: Any) -> Iterator[Any]:
    yield job


async def async_gen_fn(job: Any) -> AsyncIterator[Any]:
    yield job


# --- kinds -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "kind", "streams", "threaded"),
    [
        (sync_fn, HandlerKind.SYNC, False, True),
        (async_fn, HandlerKind.ASYNC, False, False),
        (sync_gen_fn, HandlerKind.SYNC_GEN, True, True),
        (async_gen_fn, HandlerKind.ASYNC_GEN, True, False),
    ],
)
def test_handler_detects_each_kind(fn: Any, kind: HandlerKind, streams: bool, threaded: bool) -> None:
    h = handler(fn)
    assert h.kind is kind
    assert h.kind.streams is streams
    assert h.kind.threaded is threaded


def test_handler_detects_an_async_function_behind_functools_partial() -> None:
    async def add(a: int, job: Any) -> int:
        return a

    assert handler(functools.partial(add, 1)).kind is HandlerKind.ASYNC


def test_handler_detects_a_callable_object_with_an_async_call() -> None:
    class Model:
        async def __call__(self, job: Any) -> int:
            return 1

    assert handler(Model()).kind is HandlerKind.ASYNC


# --- bare and with options -------------------------------------------------------------------------------------


def test_bare_handler_has_the_defaults() -> None:
    h = handler(sync_fn)
    assert isinstance(h, Handler)
    assert (h.concurrency, h.timeout, h.aggregate_stream, h.input_model, h.setup) == (1, None, False, None, None)
    assert h.name == "sync_fn"


def test_handler_with_options_keeps_them() -> None:
    def load() -> str:
        return "model"

    def modifier(n: int) -> int:
        return n + 1

    h = handler(
        concurrency=4, timeout=2.5, aggregate_stream=True, input_model=Item, setup=load, concurrency_modifier=modifier
    )(sync_gen_fn)
    assert isinstance(h, Handler)
    assert h.concurrency == 4 and h.timeout == 2.5 and h.aggregate_stream
    assert h.input_model is Item and h.setup is load and h.concurrency_modifier is modifier
    assert not h.takes_model, "the function takes the Job; input_model only validates it"


def test_handler_with_empty_parentheses_is_the_bare_form() -> None:
    h = handler()(async_fn)
    assert isinstance(h, Handler) and h.kind is HandlerKind.ASYNC and h.concurrency == 1


def test_calling_a_decorated_sync_function_still_calls_it() -> None:
    assert handler(sync_fn)(3) == {"sync": 3}
    assert handler(concurrency=2)(sync_fn)(job=4) == {"sync": 4}


async def test_calling_a_decorated_async_function_still_returns_its_coroutine() -> None:
    assert await handler(async_fn)(5) == {"async": 5}


async def test_calling_decorated_generators_still_yields() -> None:
    assert list(handler(sync_gen_fn)(1)) == [1]
    assert [x async for x in handler(async_gen_fn)(2)] == [2]


# --- option validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True, None])
def test_concurrency_must_be_an_int_of_at_least_one(value: Any) -> None:
    with pytest.raises(ConfigError, match="concurrency must be an int >= 1"):
        handler(concurrency=value)(sync_fn)


@pytest.mark.parametrize("value", [0, -0.5, float("nan")])
def test_timeout_must_be_positive(value: float) -> None:
    with pytest.raises(ConfigError, match="timeout must be > 0"):
        handler(timeout=value)(sync_fn)


@pytest.mark.parametrize("value", [dict, Item(name="x"), "Item", list[Item], Item | None])
def test_input_model_must_be_a_pydantic_model_class(value: Any) -> None:
    with pytest.raises(ConfigError, match="input_model must be a pydantic model class"):
        handler(input_model=value)(sync_fn)


def test_setup_must_be_callable() -> None:
    with pytest.raises(ConfigError, match="setup must be callable"):
        handler(setup="load_model")(sync_fn)  # type: ignore[call-overload]


@pytest.mark.parametrize("value", [5, "handler", None])
def test_handler_needs_a_function(value: Any) -> None:
    with pytest.raises(ConfigError, match="@handler needs a function"):
        Handler(value)


def test_config_error_is_raised_at_decoration_time_not_at_call_time() -> None:
    with pytest.raises(ConfigError):

        @handler(concurrency=0)
        def never(job: Any) -> None: ...


# --- typed input -----------------------------------------------------------------------------------------------


def test_input_model_is_inferred_from_an_annotated_first_parameter() -> None:
    @handler
    def h(item: Item) -> str:
        return item.name

    assert h.input_model is Item and h.takes_model


def test_explicit_input_model_with_an_annotated_parameter_passes_the_model() -> None:
    class Other(BaseModel):
        name: str

    @handler(input_model=Other)
    async def h(item: Item) -> str:
        return item.name

    assert h.input_model is Other, "an explicit model wins over the annotation"
    assert h.takes_model


@pytest.mark.parametrize("annotation", [Job, dict, "Job", Any])
def test_non_model_annotation_infers_no_input_model(annotation: Any) -> None:
    def fn(job):  # type: ignore[no-untyped-def]
        return job

    fn.__annotations__ = {"job": annotation}
    h = handler(fn)
    assert h.input_model is None and not h.takes_model


def test_unresolvable_annotation_infers_no_model_instead_of_failing() -> None:
    def fn(job: "NoSuchType") -> None:  # type: ignore[name-defined]  # noqa: F821
        return None

    h = handler(fn)
    assert h.input_model is None and not h.takes_model


def test_function_without_parameters_is_accepted() -> None:
    assert handler(lambda: 1).input_model is None


# --- Job -------------------------------------------------------------------------------------------------------


def test_job_has_attribute_and_mapping_access_like_a_runpod_dict_job() -> None:
    job = Job({"id": "abc", "input": {"prompt": "hi"}, "webhook": "http://x"})
    assert job.id == job["id"] == "abc"
    assert job.input == job["input"] == {"prompt": "hi"}
    assert job["webhook"] == "http://x"
    assert job.get("missing") is None
    assert "input" in job and "missing" not in job
    assert dict(job) == {"id": "abc", "input": {"prompt": "hi"}, "webhook": "http://x"}
    assert len(job) == 3
    with pytest.raises(KeyError):
        job["missing"]


def test_job_mapping_input_follows_the_validated_model() -> None:
    job = Job({"id": "a", "input": {"name": "n"}})
    job.input = Item(name="n")
    assert job["input"] == Item(name="n")


def test_job_input_defaults_to_none_when_absent() -> None:
    assert Job({"id": "a"}).input is None


def test_job_progress_calls_the_callback_with_each_update() -> None:
    got: list[Any] = []
    job = Job({"id": "a", "input": {}}, on_progress=got.append)
    job.progress({"step": 1})
    job.progress("half")
    assert got == [{"step": 1}, "half"]


def test_job_progress_without_a_callback_is_harmless() -> None:
    Job({"id": "a"}).progress({"step": 1})


def test_job_state_carries_the_setup_result() -> None:
    assert Job({"id": "a"}, state={"model": 1}).state == {"model": 1}


def test_job_is_not_cancelled_until_marked() -> None:
    job = Job({"id": "a"})
    assert not job.cancelled
    assert job.wait_cancelled(0.01) is False
    job._mark_cancelled()
    assert job.cancelled
    assert job.wait_cancelled(0) is True


async def test_job_wait_cancelled_wakes_a_waiting_thread_when_marked() -> None:
    job = Job({"id": "a"})
    waiting = threading.Event()
    result: list[bool] = []

    def wait() -> None:
        waiting.set()
        result.append(job.wait_cancelled(30))

    t = threading.Thread(target=wait)
    t.start()
    await asyncio.to_thread(waiting.wait, 10)
    job._mark_cancelled()
    await asyncio.to_thread(t.join, 10)
    assert result == [True]
