"""Our entry points tune the garbage collector for a process that keeps many job records; importing the
package never does."""

from __future__ import annotations

import subprocess
import sys

from handler_sdk.collector import THRESHOLDS


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_importing_the_package_leaves_the_collector_alone() -> None:
    out = _run("import gc, handler_sdk, handler_sdk.serve.server; print(gc.get_threshold(), gc.get_freeze_count())")
    assert out == "(700, 10, 10) 0"


def test_tune_collector_freezes_start_up_objects_and_raises_the_thresholds() -> None:
    out = _run(
        "import gc; from handler_sdk.collector import tune_collector; tune_collector(); "
        "print(gc.get_threshold(), gc.get_freeze_count() > 1000)"
    )
    assert out == f"{THRESHOLDS} True"
