"""Engine lifecycle in a process of its own: the setup hook starts it, process exit shuts it down cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

SCRIPT = """
import asyncio, multiprocessing
from handler_sdk.vllm import handler

KEPT = []  # like a worker, which holds its setup state until the process ends

async def main():
    engine = await handler.setup()
    KEPT.append(engine)
    print("children", *[p.pid for p in multiprocessing.active_children()], flush=True)
    print("unfinished", engine.unfinished(), flush=True)

if __name__ == "__main__":  # vLLM starts its engine core with spawn, which re-imports this file
    asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_engine_shuts_down_cleanly_at_process_exit(tiny_model_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "start_and_exit.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_NAME", "MAX_MODEL_LEN", "DTYPE")}
    env["HANDLER_SDK_CACHE"] = str(tiny_model_dir.parent)
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["unfinished"] == "0"
    children = [int(pid) for pid in lines["children"].split()]
    assert children  # the engine core process
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children)
    # Shut down by the atexit hook, and nothing left for vLLM's __del__ to trip over during interpreter teardown.
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr[-3000:]
    assert "TINY RANDOM-WEIGHT" in result.stderr  # the loud warning when MODEL_NAME is unset
