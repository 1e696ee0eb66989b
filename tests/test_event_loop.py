"""The event loop choice: uvloop where installed, HANDLER_SDK_LOOP=asyncio to turn it off, a clear error when
uvloop is asked for and missing; serve, the worker and the test session all follow it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANDLERS, ROOT

from handler_sdk import loop as event_loop
from handler_sdk.errors import ConfigError

try:
    import uvloop
except ImportError:  # pragma: no cover - the fast extra is part of the test setup
    uvloop = None  # type: ignore[assignment]

needs_uvloop = pytest.mark.skipif(uvloop is None, reason="uvloop (the fast extra) is not installed")


async def _which() -> str:
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


@needs_uvloop
@pytest.mark.parametrize("choice", ["", "auto", "uvloop", " UVLOOP "])
def test_run_takes_uvloop_unless_told_otherwise(choice: str) -> None:
    assert event_loop.run(_which(), choice) == "uvloop"
    assert event_loop.loop_name(choice) == "uvloop"


def test_asyncio_turns_uvloop_off() -> None:
    assert event_loop.run(_which(), "asyncio") == "asyncio"
    assert event_loop.loop_name("asyncio") == "asyncio"


def test_an_unknown_choice_is_a_config_error_naming_the_variable() -> None:
    coro = _which()
    with pytest.raises(ConfigError, match=r"HANDLER_SDK_LOOP='tokio' is not one of auto, uvloop, asyncio"):
        event_loop.run(coro, "tokio")
    assert coro.cr_frame is None  # closed, not left to warn 'never awaited'


def test_uvloop_asked_for_but_missing_fails_start_up_clearly(tmp_path: Path) -> None:
    # A directory earlier on sys.path whose uvloop cannot import stands in for an environment without the extra.
    (tmp_path / "uvloop.py").write_text("raise ImportError('no uvloop here')\n")
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "HANDLER_SDK_LOOP": "uvloop", "PATH": "/usr/bin:/bin"}
    serve = subprocess.run(
        [sys.executable, "-m", "handler_sdk.serve", str(HANDLERS / "echo_async.py"), "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert serve.returncode == 2
    assert "HANDLER_SDK_LOOP=uvloop but uvloop is not installed (pip install 'handler-sdk[fast]')" in serve.stderr
    worker = subprocess.run(
        [sys.executable, "-m", "handler_sdk.worker", str(HANDLERS / "echo_async.py")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert worker.returncode == 2
    assert "uvloop is not installed" in worker.stderr
    auto = subprocess.run(
        [sys.executable, "-c", "from handler_sdk import loop; print(loop.loop_name())"],
        env={**env, "HANDLER_SDK_LOOP": ""}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert auto.stdout.strip() == "asyncio"  # auto falls back quietly


@pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
def test_one_shot_mode_runs_on_the_chosen_loop(choice: str, tmp_path: Path) -> None:
    if choice == "uvloop" and uvloop is None:
        pytest.skip("uvloop is not installed")
    handler = tmp_path / "which_loop.py"
    handler.write_text(
        "import asyncio\n"
        "from handler_sdk import handler\n"
        "@handler\n"
        "async def which(job):\n"
        "    return type(asyncio.get_running_loop()).__module__.partition('.')[0]\n"
    )
    env = {"PYTHONPATH": str(ROOT), "HANDLER_SDK_LOOP": choice, "PATH": "/usr/bin:/bin"}
    p = subprocess.run(
        [sys.executable, "-m", "handler_sdk.serve", str(handler), "--test-input", '{"input": {}}'],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert f'"output":"{choice}"' in p.stdout


async def test_the_test_session_runs_on_the_chosen_loop() -> None:
    assert await _which() == event_loop.loop_name()
