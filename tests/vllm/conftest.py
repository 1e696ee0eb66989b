"""One tiny model and ONE engine for the whole session (engine start-up is 30-50 s on two cores).

``tiny_model_dir`` builds the tiny model through its command line (``python -m handler_sdk.vllm.tiny DIR``);
``engine`` starts it through the ready-made handler's own setup hook, with ``MODEL_NAME`` unset, so the
default path a user gets with no configuration is the one under test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# vLLM reads these when it first needs them, which is after this module is imported.
_VLLM_CACHE = tempfile.mkdtemp(prefix="handler-sdk-vllm-cache-")
os.environ["VLLM_CACHE_ROOT"] = _VLLM_CACHE
os.environ["VLLM_NO_USAGE_STATS"] = "1"
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from benchmarks.vllm_pair import WEATHER  # noqa: E402, F401  (the bounded tool the parity and surface tests send)
from handler_sdk import codec  # noqa: E402
from handler_sdk.chunker import EncodedItem  # noqa: E402
from handler_sdk.job import Job  # noqa: E402
from handler_sdk.runner import Outcome, run_job  # noqa: E402
from handler_sdk.threads import ElasticPool  # noqa: E402
from handler_sdk.vllm import Engine, handler  # noqa: E402
from handler_sdk.vllm.tiny import build_tiny_lora  # noqa: E402

ENGINE_START_TIMEOUT = 300


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The first test to use the engine also pays for starting it: give that one test the start-up time."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here) and "engine" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(ENGINE_START_TIMEOUT))
            return


@pytest.fixture(scope="session", autouse=True)
def _vllm_cache_cleanup() -> Iterator[None]:
    yield
    shutil.rmtree(_VLLM_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, built once per session by its CLI; ``<dir>.parent`` works as ``HANDLER_SDK_CACHE``."""
    dest = tmp_path_factory.mktemp("handler_sdk_cache") / "tiny-llama"
    subprocess.run([sys.executable, "-m", "handler_sdk.vllm.tiny", str(dest)], check=True, capture_output=True)
    return dest


@pytest.fixture(scope="session")
def tiny_lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter for the tiny model with random (non-zero) B weights, so that it changes the output."""
    return build_tiny_lora(tmp_path_factory.mktemp("lora") / "tiny-lora")


# The session engine serves tool calls (hermes needs no special tokens) and one LoRA adapter, so that the
# tests of both share the one engine start.
SESSION_ENV = {"ENABLE_AUTO_TOOL_CHOICE": "true", "TOOL_CALL_PARSER": "hermes", "ENABLE_LORA": "true",
               "MAX_LORAS": "1", "MAX_LORA_RANK": "8"}  # fmt: skip
LORA_NAME = "tiny-lora"


@pytest.fixture(scope="session")
async def engine(tiny_model_dir: Path, tiny_lora_dir: Path) -> AsyncIterator[Engine]:
    """The session's engine, started by ``handler.setup`` as a worker would, on the tiny default."""
    assert handler.setup is not None
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MODEL_NAME", "TOKENIZER_NAME", "OPENAI_SERVED_MODEL_NAME_OVERRIDE", "MAX_MODEL_LEN", "DTYPE"):
            mp.delenv(name, raising=False)
        mp.setenv("HANDLER_SDK_CACHE", str(tiny_model_dir.parent))
        for name, value in SESSION_ENV.items():
            mp.setenv(name, value)
        mp.setenv("LORA_MODULES", codec.dumps_str([{"name": LORA_NAME, "path": str(tiny_lora_dir)}]))
        started = await handler.setup()
    assert isinstance(started, Engine)
    yield started
    await asyncio.to_thread(started.shutdown)


@dataclass
class Ran:
    """One job's run: its outcome and the stream items it emitted, decoded, in emission order."""

    outcome: Outcome
    items: list[Any] = field(default_factory=list)
    metrics: list[dict[str, Any] | None] = field(default_factory=list)

    @property
    def output(self) -> Any:
        assert self.outcome.output is not None, self.outcome
        return codec.loads(self.outcome.output)


Emit = Callable[[EncodedItem], Awaitable[None]]
OnItem = Callable[[int, Any], Awaitable[None]]


@dataclass
class JobRunner:
    """Drives the ready-made handler with ``run_job`` against the session engine: no HTTP in between."""

    engine: Engine
    pool: ElasticPool
    count: int = 0

    def job(self, job_input: Any) -> Job:
        self.count += 1
        return Job({"id": f"job-{self.count}", "input": job_input}, state=self.engine)

    async def run(
        self, job_input: Any, *, timeout: float | None = None, on_item: OnItem | None = None, ran: Ran | None = None
    ) -> Ran:
        """Run one job; ``on_item(index, output)`` runs inside emit, so it can stall like a slow network."""
        ran = ran if ran is not None else Ran(Outcome.__new__(Outcome))

        async def emit(item: EncodedItem) -> None:
            ran.items.append(codec.loads(item.output))
            ran.metrics.append(codec.loads(item.metrics) if item.metrics is not None else None)
            if on_item is not None:
                await on_item(len(ran.items) - 1, ran.items[-1])

        ran.outcome = await run_job(handler, self.job(job_input), emit=emit, pool=self.pool, timeout=timeout)
        return ran


@pytest.fixture
def jobs(engine: Engine) -> JobRunner:
    return JobRunner(engine, ElasticPool())


async def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


@pytest.fixture
def wait_for() -> Callable[..., Awaitable[bool]]:
    """``await wait_for(predicate, timeout=10)``: poll until true; returns whether it became true in time."""
    return _wait_for
