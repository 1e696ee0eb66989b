"""How each environment variable of worker-vllm's configuration reference is treated here.

The table in docs/VLLM.md lists the same names with the same treatment, and a test checks that the two agree.
Kinds:

* ``engine``: an ``AsyncEngineArgs`` field, read from its upper-case name (same name, same meaning);
* ``same``: read by this handler under the same name and with the same meaning;
* ``renamed``: the meaning is served under another name (the detail says which); the old name is not read;
* ``not read``: ignored, for the reason given (a setting with no effect in vLLM 0.32, or always on here);
* ``refused``: start-up stops with a ConfigError that says what to set instead, because ignoring it would
  silently serve something other than what was asked for.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ConfigError

__all__ = ["WORKER_VLLM_VARIABLES", "check_refused"]

_ENGINE = [
    "SKIP_TOKENIZER_INIT",
    "TOKENIZER_MODE",
    "TRUST_REMOTE_CODE",
    "DOWNLOAD_DIR",
    "LOAD_FORMAT",
    "HF_TOKEN",
    "DTYPE",
    "KV_CACHE_DTYPE",
    "MAX_MODEL_LEN",
    "DISTRIBUTED_EXECUTOR_BACKEND",
    "PIPELINE_PARALLEL_SIZE",
    "TENSOR_PARALLEL_SIZE",
    "MAX_PARALLEL_LOADING_WORKERS",
    "RAY_WORKERS_USE_NSIGHT",
    "ENABLE_PREFIX_CACHING",
    "DISABLE_SLIDING_WINDOW",
    "SEED",
    "NUM_GPU_BLOCKS_OVERRIDE",
    "MAX_NUM_BATCHED_TOKENS",
    "MAX_NUM_SEQS",
    "MAX_LOGPROBS",
    "DISABLE_LOG_STATS",
    "QUANTIZATION",
    "ENABLE_LORA",
    "MAX_LORAS",
    "MAX_LORA_RANK",
    "LORA_DTYPE",
    "MAX_CPU_LORAS",
    "FULLY_SHARDED_LORAS",
    "SPECULATIVE_CONFIG",
    "GPU_MEMORY_UTILIZATION",
    "BLOCK_SIZE",
    "ENFORCE_EAGER",
    "DISABLE_CUSTOM_ALL_REDUCE",
    "ENABLE_EXPERT_PARALLEL",
    "ATTENTION_BACKEND",
    "ASYNC_SCHEDULING",
    "STREAM_INTERVAL",
    "TOKENIZER_REVISION",
    "REASONING_PARSER",
    "ENABLE_LOG_REQUESTS",
    "MODEL_LOADER_EXTRA_CONFIG",
]

_SAME = {
    "MODEL_NAME": "hub id or local path (`model`); a hub id in runpod's cache loads from there offline",
    "MODEL_REVISION": "the model's revision (`revision`)",
    "TOKENIZER_NAME": "hub id or local path of the tokenizer (`tokenizer`)",
    "BASE_PATH": "root of runpod's model cache, `$BASE_PATH/huggingface-cache/hub` (default `/runpod-volume`)",
    "LORA_MODULES": 'adapters: `[{"name", "path", "base_model_name"?}]`, one such object, or `name=path ...`',
    "CUSTOM_CHAT_TEMPLATE": "the chat template, a path or the template text (also `CHAT_TEMPLATE`)",
    "ENABLE_AUTO_TOOL_CHOICE": "let the model call tools on its own (needs `TOOL_CALL_PARSER`)",
    "TOOL_CALL_PARSER": "vLLM's tool parser, e.g. `hermes`, `llama3_json`, `mistral`",
    "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "the model name OpenAI clients use",
    "OPENAI_RESPONSE_ROLE": "the role of the chat answer (default `assistant`)",
    "TRUST_REQUEST_CHAT_TEMPLATE": "let requests bring their own chat template",
    "RETURN_TOKENS_AS_TOKEN_IDS": "logprob tokens as `token_id:N`",
    "EXCLUDE_TOOLS_WHEN_TOOL_CHOICE_NONE": "leave tools out of the prompt when `tool_choice` is `none`",
    "ENABLE_PROMPT_TOKENS_DETAILS": "prompt token details in usage",
    "ENABLE_FORCE_INCLUDE_USAGE": "usage in every answer, streamed or not",
    "MAX_CONCURRENCY": "jobs one worker runs at once (default 30)",
    "DEFAULT_BATCH_SIZE": "most tokens per stream item (default 50)",
    "DEFAULT_MIN_BATCH_SIZE": "tokens in the first stream item (default 1; also `MIN_BATCH_SIZE`)",
    "DEFAULT_BATCH_SIZE_GROWTH_FACTOR": "growth of each item's batch (default 3; also `BATCH_SIZE_GROWTH_FACTOR`)",
}

_RENAMED = {
    "TOKENIZER": "TOKENIZER_NAME (a name this generic is too often set for other programs)",
    "MAX_CONTEXT_LEN_TO_CAPTURE": "COMPILATION_CONFIG (vLLM 0.32 sizes CUDA graphs there)",
    "VLLM_ATTENTION_BACKEND": "ATTENTION_BACKEND",
    "DISABLE_LOG_REQUESTS": "ENABLE_LOG_REQUESTS (inverted in vLLM; off by default)",
    "DISABLE_LOGGING_REQUEST": "ENABLE_LOG_REQUESTS (off by default)",
    "WORKER_CUDA_VERSION": "the `CUDA_IMAGE` build argument of Dockerfile.gpu",
}

_NOT_READ = {
    "RAW_OPENAI_OUTPUT": "always on: OpenAI streams are vLLM's own SSE strings",
    "SWAP_SPACE": "vLLM 0.32 has no swap space (the V1 engine preempts by recomputing)",
    "NUM_LOOKAHEAD_SLOTS": "gone from vLLM 0.32",
    "MAX_SEQ_LEN_TO_CAPTURE": "gone from vLLM 0.32 (CUDA graph sizes are in COMPILATION_CONFIG)",
    "USE_V2_BLOCK_MANAGER": "gone from vLLM (it is the only block manager)",
    "PREEMPTION_MODE": "gone from vLLM 0.32 (it always recomputes)",
    "PREEMPTION_CHECK_PERIOD": "gone from vLLM 0.32",
    "PREEMPTION_CPU_CAPACITY": "gone from vLLM 0.32",
    "ENABLE_LOG_OUTPUTS": "a log knob of vLLM's HTTP server, which is not used here",
    "LOG_ERROR_STACK": "a log knob of vLLM's HTTP server; failed jobs carry their traceback anyway",
    "MAX_LOG_LEN": "a log knob of vLLM's HTTP server, which is not used here",
}

_SPECULATIVE = [
    "SPECULATIVE_METHOD",
    "SPECULATIVE_MODEL",
    "NUM_SPECULATIVE_TOKENS",
    "SPECULATIVE_DRAFT_TENSOR_PARALLEL_SIZE",
    "SPECULATIVE_MAX_MODEL_LEN",
    "SPECULATIVE_DISABLE_BY_BATCH_SIZE",
    "NGRAM_PROMPT_LOOKUP_MAX",
    "NGRAM_PROMPT_LOOKUP_MIN",
]
_REFUSED = {name: 'set SPECULATIVE_CONFIG (JSON, e.g. {"method": "ngram", ...}) instead' for name in _SPECULATIVE}

WORKER_VLLM_VARIABLES: dict[str, tuple[str, str]] = {
    **{name: ("engine", "") for name in _ENGINE},
    **{name: ("same", why) for name, why in _SAME.items()},
    **{name: ("renamed", to) for name, to in _RENAMED.items()},
    **{name: ("not read", why) for name, why in _NOT_READ.items()},
    **{name: ("refused", why) for name, why in _REFUSED.items()},
}
"""worker-vllm's variable -> (kind, detail), for every variable of its configuration reference."""


def check_refused(env: Mapping[str, str]) -> None:
    """ConfigError for the first refused variable that is set, saying what to set instead."""
    for name, why in _REFUSED.items():
        if (env.get(name) or "").strip():
            raise ConfigError(f"{name} is not read by this worker: {why}")
