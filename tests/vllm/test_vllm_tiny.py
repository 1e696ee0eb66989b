"""The tiny-model builder: its command line, and the build-once cache the ready-made handler uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from handler_sdk.vllm import ensure_tiny_model

pytestmark = pytest.mark.vllm


def test_the_cli_builds_a_complete_small_model(tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    # head_dim 64: the CPU attention kernel has no kernel for small heads.
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    size = sum(f.stat().st_size for f in tiny_model_dir.iterdir())
    assert size < 3 << 20
    assert (tiny_model_dir / "handler_sdk_tiny.txt").exists()


def test_the_tiny_tokenizer_round_trips_text_and_has_a_chat_template(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Hello, tiny world! 123"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("assistant: ")
    assert 200 <= len(tok) <= 400


def test_an_existing_build_is_reused(tiny_model_dir: Path) -> None:
    weights = tiny_model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert ensure_tiny_model(tiny_model_dir) == tiny_model_dir
    assert weights.stat().st_mtime_ns == before


def test_an_unfinished_build_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "tiny"
    target.mkdir()
    (target / "config.json").write_text("{}")  # a build that died before its marker was written
    assert ensure_tiny_model(target) == target
    assert (target / "handler_sdk_tiny.txt").exists()
    assert json.loads((target / "config.json").read_text())["model_type"] == "llama"
