"""The fault scenarios: real serve and worker processes on loopback, real signals, real files.

Tests marked ``faults_long`` (load, soak, 1,000-job kills, 30 s outages) are skipped by default and run with
``python -m tests.faults``, which writes their figures into docs/GUARANTEES.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

FAULTS = Path(__file__).resolve().parent
LONG_ENV = "HANDLER_SDK_FAULTS_LONG"
FIGURES_ENV = "HANDLER_SDK_FAULT_FIGURES"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults_long: a long fault scenario (python -m tests.faults runs them)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(LONG_ENV) == "1":
        return
    skip = pytest.mark.skip(reason="long fault scenario: run python -m tests.faults")
    for item in items:
        if "faults_long" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict[str, Any]:
    """A long scenario's figures, appended (as one JSON line per test) to the file the runner reads."""
    found: dict[str, Any] = {}
    yield found
    path = os.environ.get(FIGURES_ENV)
    if path and found:
        with open(path, "a") as f:
            f.write(json.dumps({"test": request.node.name, **found}) + "\n")
