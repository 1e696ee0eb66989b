"""docs/VLLM.md's table of worker-vllm's variables agrees with the code, and each kind behaves as it says:
engine fields reach the engine, refused ones stop start-up naming what to set, the rest are read or ignored."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from vllm import AsyncEngineArgs

from handler_sdk.errors import ConfigError
from handler_sdk.vllm import EngineConfig
from handler_sdk.vllm.config import _engine_fields
from handler_sdk.vllm.envtable import WORKER_VLLM_VARIABLES

pytestmark = pytest.mark.vllm

DOC = Path(__file__).resolve().parents[2] / "docs" / "VLLM.md"
ROW = re.compile(r"^\| `(?P<name>[A-Z0-9_]+)` \| (?P<kind>[a-z ]+) \| (?P<notes>.*) \|$")


def doc_table() -> dict[str, tuple[str, str]]:
    text = DOC.read_text()
    body = text.split("<!-- worker-vllm variables: begin -->")[1].split("<!-- worker-vllm variables: end -->")[0]
    rows = {}
    for line in body.strip().splitlines()[2:]:
        m = ROW.match(line)
        assert m, f"malformed row in docs/VLLM.md: {line!r}"
        assert m["name"] not in rows, f"{m['name']} is listed twice"
        rows[m["name"]] = (m["kind"], m["notes"])
    return rows


def test_the_docs_table_lists_every_variable_with_the_kind_the_code_gives_it() -> None:
    rows = doc_table()
    assert {name: kind for name, (kind, _) in rows.items()} == {n: k for n, (k, _) in WORKER_VLLM_VARIABLES.items()}
    for name, (kind, detail) in WORKER_VLLM_VARIABLES.items():
        if kind == "renamed":
            assert f"`{detail.split()[0]}`" in rows[name][1], (name, rows[name])


ENGINE_FIELDS = {f.name.upper() for f in dataclasses.fields(AsyncEngineArgs)}


@pytest.mark.parametrize("name", [n for n, (k, _) in WORKER_VLLM_VARIABLES.items() if k == "engine"])
def test_engine_kind_variables_are_engine_fields_read_from_the_environment(name: str) -> None:
    assert name in ENGINE_FIELDS
    assert _engine_fields()[name][0] == name.lower()  # what engine_kwargs_from_env reads


@pytest.mark.parametrize("name", [n for n, (k, _) in WORKER_VLLM_VARIABLES.items() if k == "refused"])
def test_refused_variables_stop_start_up_naming_the_variable_and_what_to_set(name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} is not read.*SPECULATIVE_CONFIG"):
        EngineConfig.from_env({name: "3"})


@pytest.mark.parametrize("name", [n for n, (k, _) in WORKER_VLLM_VARIABLES.items() if k in ("not read", "renamed")])
def test_not_read_and_renamed_variables_change_nothing(name: str) -> None:
    assert EngineConfig.from_env({name: "1"}) == EngineConfig.from_env({})


def test_same_kind_variables_are_read() -> None:
    base = EngineConfig.from_env({})
    values = {"MAX_CONCURRENCY": "7", "DEFAULT_BATCH_SIZE": "20", "DEFAULT_MIN_BATCH_SIZE": "2",
              "DEFAULT_BATCH_SIZE_GROWTH_FACTOR": "2", "OPENAI_RESPONSE_ROLE": "bot",
              "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "mine", "TRUST_REQUEST_CHAT_TEMPLATE": "true",
              "RETURN_TOKENS_AS_TOKEN_IDS": "true", "EXCLUDE_TOOLS_WHEN_TOOL_CHOICE_NONE": "true",
              "ENABLE_PROMPT_TOKENS_DETAILS": "true", "ENABLE_FORCE_INCLUDE_USAGE": "true",
              "CUSTOM_CHAT_TEMPLATE": "{{ messages }}", "TOOL_CALL_PARSER": "hermes",
              "ENABLE_AUTO_TOOL_CHOICE": "true", "LORA_MODULES": "a=/x", "MODEL_NAME": "/m",
              "MODEL_REVISION": "v1", "TOKENIZER_NAME": "/t", "BASE_PATH": "/nowhere"}  # fmt: skip
    same = {n for n, (k, _) in WORKER_VLLM_VARIABLES.items() if k == "same"}
    assert same == set(values)
    for name, value in values.items():
        changed = EngineConfig.from_env({name: value}) if name != "ENABLE_AUTO_TOOL_CHOICE" else None
        if name == "BASE_PATH":
            continue  # read only to find a hub id in runpod's cache: see test_vllm_config
        if changed is None:
            changed = EngineConfig.from_env({name: value, "TOOL_CALL_PARSER": "hermes"})
            assert changed.serving.enable_auto_tools
            continue
        assert changed != base, name


def test_auto_tool_choice_without_a_parser_stops_start_up() -> None:
    with pytest.raises(ConfigError, match="TOOL_CALL_PARSER"):
        EngineConfig.from_env({"ENABLE_AUTO_TOOL_CHOICE": "true"})
    with pytest.raises(ConfigError, match="ENABLE_AUTO_TOOL_CHOICE='maybe'"):
        EngineConfig.from_env({"ENABLE_AUTO_TOOL_CHOICE": "maybe", "TOOL_CALL_PARSER": "hermes"})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            '[{"name": "a", "path": "/x"}, {"name": "b", "path": "org/b", "base_model_name": "m"}]',
            [("a", "/x", None), ("b", "org/b", "m")],
        ),
        ('{"name": "a", "path": "/x"}', [("a", "/x", None)]),
        ("a=/x b=org/b", [("a", "/x", None), ("b", "org/b", None)]),
    ],
)
def test_lora_modules_take_vllms_forms(raw: str, expected: list[tuple[str, str, str | None]]) -> None:
    got = EngineConfig.from_env({"LORA_MODULES": raw}).serving.lora_modules
    assert [(m.name, m.path, m.base_model_name) for m in got] == expected


@pytest.mark.parametrize("raw", ["[{}]", '{"name": "a"}', "a", "[1"])
def test_malformed_lora_modules_stop_start_up(raw: str) -> None:
    with pytest.raises(ConfigError, match="LORA_MODULES"):
        EngineConfig.from_env({"LORA_MODULES": raw})


def test_a_hub_id_in_runpods_cache_resolves_to_its_snapshot(tmp_path: Path) -> None:
    repo = tmp_path / "huggingface-cache" / "hub" / "models--org--model"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc\n")
    cfg = EngineConfig.from_env({"MODEL_NAME": "org/model", "BASE_PATH": str(tmp_path)})
    assert cfg.model == str(repo / "snapshots" / "abc") and cfg.served_model_name == "org/model"
    other = EngineConfig.from_env({"MODEL_NAME": "org/other", "BASE_PATH": str(tmp_path)})
    assert other.model == "org/other"  # not cached there: left for Hugging Face to find
    with pytest.raises(ConfigError, match="no snapshot for revision 'v2'"):
        EngineConfig.from_env({"MODEL_NAME": "org/model", "BASE_PATH": str(tmp_path), "MODEL_REVISION": "v2"})


def test_reasoning_parser_reaches_the_engine_and_the_chat_serving() -> None:
    cfg = EngineConfig.from_env({"REASONING_PARSER": "deepseek_r1"})
    assert cfg.engine_kwargs["reasoning_parser"] == "deepseek_r1" and cfg.serving.reasoning_parser == "deepseek_r1"
