"""Env configuration: engine fields from their upper-case names, type conversion, and errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm import AsyncEngineArgs

from handler_sdk.errors import ConfigError
from handler_sdk.vllm import BatchPolicy, EngineConfig
from handler_sdk.vllm.config import TINY_ENGINE_DEFAULTS, engine_kwargs_from_env

pytestmark = pytest.mark.vllm


def test_engine_fields_are_read_from_upper_case_env_and_converted() -> None:
    kwargs = engine_kwargs_from_env(
        {
            "MAX_MODEL_LEN": "512",
            "ENFORCE_EAGER": "true",
            "TRUST_REMOTE_CODE": "0",
            "DTYPE": "bfloat16",
            "GPU_MEMORY_UTILIZATION": "0.5",
            "HF_OVERRIDES": '{"rope_theta": 5}',
            "CUDAGRAPH_CAPTURE_SIZES": "[1, 2, 4]",
            "MAX_NUM_SEQS": "none",
            "REVISION": "main",
            "UNRELATED_VARIABLE": "x",
        }
    )
    assert kwargs == {
        "max_model_len": 512,
        "enforce_eager": True,
        "trust_remote_code": False,
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.5,
        "hf_overrides": {"rope_theta": 5},
        "cudagraph_capture_sizes": [1, 2, 4],
        "max_num_seqs": None,
        "revision": "main",
    }
    AsyncEngineArgs(model="m", **kwargs)  # vLLM takes them as they are


def test_model_and_tokenizer_come_from_model_name_and_tokenizer_name() -> None:
    kwargs = engine_kwargs_from_env({"MODEL_NAME": "org/model", "TOKENIZER_NAME": "org/tok", "MODEL": "ignored"})
    assert kwargs == {"model": "org/model", "tokenizer": "org/tok"}


def test_generic_names_that_other_programs_set_are_not_engine_fields() -> None:
    assert engine_kwargs_from_env({"LOG_LEVEL": "info", "TOKENIZER": "x"}) == {}


def test_an_empty_value_counts_as_unset() -> None:
    assert engine_kwargs_from_env({"MAX_MODEL_LEN": "", "DTYPE": "  "}) == {}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_MODEL_LEN", "lots"),
        ("ENFORCE_EAGER", "perhaps"),
        ("DTYPE", "float64"),
        ("GPU_MEMORY_UTILIZATION", "most"),
        ("HF_OVERRIDES", "{not json"),
        ("MAX_MODEL_LEN", "none"),  # not optional: None is no more valid than a word
    ],
)
def test_a_value_that_does_not_convert_raises_config_error_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        EngineConfig.from_env({name: value})
    assert str(e.value).startswith(f"{name}={value!r}")


def test_without_model_name_the_tiny_model_is_served_with_cpu_defaults(tmp_path: Path) -> None:
    config = EngineConfig.from_env({"HANDLER_SDK_CACHE": str(tmp_path)})
    assert config.tiny
    assert config.model == str(tmp_path / "tiny-llama")
    assert config.served_model_name == "tiny-llama"
    for name, value in TINY_ENGINE_DEFAULTS.items():
        assert config.engine_kwargs[name] == value
    # A block size is left to vLLM: its CPU default (128) is a multiple of 32, as the CPU kernels need.
    assert "block_size" not in config.engine_kwargs


def test_env_overrides_the_tiny_defaults(tmp_path: Path) -> None:
    config = EngineConfig.from_env({"HANDLER_SDK_CACHE": str(tmp_path), "MAX_MODEL_LEN": "256", "DTYPE": "bfloat16"})
    assert config.engine_kwargs["max_model_len"] == 256
    assert config.engine_kwargs["dtype"] == "bfloat16"


def test_a_cpu_kv_cache_space_replaces_the_tiny_kv_size(tmp_path: Path) -> None:
    config = EngineConfig.from_env({"HANDLER_SDK_CACHE": str(tmp_path), "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert "kv_cache_memory_bytes" not in config.engine_kwargs


def test_a_real_model_gets_no_tiny_defaults() -> None:
    config = EngineConfig.from_env({"MODEL_NAME": "org/model"})
    assert not config.tiny
    assert config.engine_kwargs == {"model": "org/model", "served_model_name": "org/model"}
    assert config.served_model_name == "org/model"


def test_the_served_model_name_can_be_overridden() -> None:
    config = EngineConfig.from_env({"MODEL_NAME": "/models/llama", "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "llama"})
    assert config.served_model_name == "llama"
    assert config.engine_kwargs["served_model_name"] == "llama"


def test_vllms_own_served_model_name_is_used_unless_overridden() -> None:
    config = EngineConfig.from_env({"MODEL_NAME": "/models/llama", "SERVED_MODEL_NAME": '["llama", "alias"]'})
    assert config.served_model_name == "llama"
    assert config.engine_kwargs["served_model_name"] == ["llama", "alias"]
    config = EngineConfig.from_env(
        {"MODEL_NAME": "/models/llama", "SERVED_MODEL_NAME": "llama", "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "x"}
    )
    assert config.served_model_name == config.engine_kwargs["served_model_name"] == "x"


def test_handler_knobs_have_worker_vllm_defaults() -> None:
    config = EngineConfig.from_env({"MODEL_NAME": "m"})
    assert config.max_concurrency == 30
    assert config.batch == BatchPolicy(min_size=1, max_size=50, growth=3.0)


def test_handler_knobs_read_from_env() -> None:
    config = EngineConfig.from_env(
        {
            "MODEL_NAME": "m",
            "MAX_CONCURRENCY": "4",
            "DEFAULT_BATCH_SIZE": "10",
            "MIN_BATCH_SIZE": "2",
            "BATCH_SIZE_GROWTH_FACTOR": "2.5",
        }
    )
    assert config.max_concurrency == 4
    assert config.batch == BatchPolicy(min_size=2, max_size=10, growth=2.5)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MAX_CONCURRENCY": "many"}, "MAX_CONCURRENCY"),
        ({"MAX_CONCURRENCY": "0"}, "MAX_CONCURRENCY"),
        ({"DEFAULT_BATCH_SIZE": "big"}, "DEFAULT_BATCH_SIZE"),
        ({"BATCH_SIZE_GROWTH_FACTOR": "fast"}, "BATCH_SIZE_GROWTH_FACTOR"),
        ({"BATCH_SIZE_GROWTH_FACTOR": "0.5"}, "BATCH_SIZE_GROWTH_FACTOR"),
        ({"MIN_BATCH_SIZE": "60"}, "MIN_BATCH_SIZE"),
    ],
)
def test_bad_handler_knobs_raise_config_error_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        EngineConfig.from_env({"MODEL_NAME": "m", **env})


def test_batch_sizes_grow_by_the_factor_up_to_the_maximum() -> None:
    sizes = BatchPolicy(1, 50, 3).sizes()
    assert [next(sizes) for _ in range(7)] == [1, 3, 9, 27, 50, 50, 50]
    sizes = BatchPolicy(2, 10, 1.5).sizes()
    assert [next(sizes) for _ in range(6)] == [2, 3, 4, 6, 10, 10]
