"""The package namespace serve and worker load: exactly one handler, configured from the environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import handler_sdk.vllm as package
from handler_sdk.handler import Handler, HandlerKind
from handler_sdk.loader import load_handler

pytestmark = pytest.mark.vllm


def test_the_package_namespace_holds_exactly_one_handler() -> None:
    found = {name: obj for name, obj in vars(package).items() if isinstance(obj, Handler)}
    assert found == {"handler": package.handler}
    assert load_handler("handler_sdk.vllm") is package.handler


def test_the_ready_made_handler_streams_and_starts_the_engine_in_its_setup_hook() -> None:
    assert package.handler.kind is HandlerKind.ASYNC_GEN
    assert package.handler.setup is not None
    assert package.handler.input_model is None  # two input shapes; parsed by the handler with named errors


def test_public_names_exist() -> None:
    assert all(hasattr(package, name) for name in package.__all__)


def _import_with(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import handler_sdk.vllm as v; print(v.handler.concurrency)"
    clean = {k: v for k, v in os.environ.items() if k != "MAX_CONCURRENCY"}
    return subprocess.run(
        [sys.executable, "-c", code], check=False, env={**clean, **env}, capture_output=True, text=True
    )


def test_concurrency_is_max_concurrency_defaulting_to_30() -> None:
    assert package.handler.concurrency == int(os.environ.get("MAX_CONCURRENCY") or 30)
    assert _import_with({"MAX_CONCURRENCY": "7"}).stdout.split()[-1] == "7"


def test_a_bad_max_concurrency_fails_the_import_naming_the_variable() -> None:
    result = _import_with({"MAX_CONCURRENCY": "lots"})
    assert result.returncode != 0
    assert "ConfigError: MAX_CONCURRENCY='lots' is not an integer" in result.stderr
