"""The cases of test_vllm_protocol_parity: protocol-level requests from vLLM's tests/entrypoints/openai (and
tests/entrypoints/serve/tokenize), each with the status vLLM's own server gives it on the tiny model."""

from __future__ import annotations

from typing import Any

from conftest import LORA_NAME, WEATHER

MODEL = "tiny-llama"
MESSAGES = [{"role": "user", "content": "Say something."}]
VERDICT = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}
# --- the cases ------------------------------------------------------------------------------------------------

C = "/v1/completions"
CHAT = "/v1/chat/completions"
LONG_SEED = -9223372036854775809
LONG_SEED_BODY = '{"model": "tiny-llama", "prompt": "x", "max_tokens": 2, "seed": -9223372036854775809}'
LONG_SEED_CHAT = ('{"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, '
                  '"seed": -9223372036854775809}')  # fmt: skip
GREEDY = {"model": MODEL, "temperature": 0, "ignore_eos": True}


def completion(**fields: Any) -> dict[str, Any]:
    return {**GREEDY, "prompt": "Hello, my name is", "max_tokens": 5, **fields}


def chat(**fields: Any) -> dict[str, Any]:
    return {**GREEDY, "messages": MESSAGES, "max_tokens": 5, **fields}


CONVERSATION = [{"role": "user", "content": "Hi there!"}, {"role": "assistant", "content": "Nice to meet you!"},
                {"role": "user", "content": "Can I ask a question? vllm1"}]  # fmt: skip

# (id, vLLM's status, method, path, body, raw): raw bodies are sent as they are (strings that need not be JSON).
# The status is vLLM's own answer, seen against its server: it keeps a case from passing because both sides fail.
CASES: list[tuple[str, int, str, str, Any, bool]] = [
    ("version", 200, "GET", "/version", None, False),
    ("health", 200, "GET", "/health", None, False),
    ("models", 200, "GET", "/v1/models", None, False),
    # tokenize / detokenize (tests/entrypoints/serve/tokenize)
    ("tokenize", 200, "POST", "/tokenize", {"model": MODEL, "prompt": "vllm1 This is a test prompt."}, False),
    (
        "tokenize-no-special",
        200,
        "POST",
        "/tokenize",
        {"model": MODEL, "prompt": "vllm1 test", "add_special_tokens": False},
        False,
    ),
    (
        "tokenize-token-strs",
        200,
        "POST",
        "/tokenize",
        {"model": MODEL, "prompt": "a test!", "return_token_strs": True},
        False,
    ),
    (
        "tokenize-chat",
        200,
        "POST",
        "/tokenize",
        {"model": MODEL, "messages": CONVERSATION, "add_generation_prompt": True},
        False,
    ),
    (
        "tokenize-chat-continue",
        200,
        "POST",
        "/tokenize",
        {
            "model": MODEL,
            "messages": [*CONVERSATION, {"role": "assistant", "content": "Sure,"}],
            "add_generation_prompt": False,
            "continue_final_message": True,
        },
        False,
    ),
    (
        "tokenize-chat-tools",
        200,
        "POST",
        "/tokenize",
        {"model": MODEL, "messages": MESSAGES, "tools": [WEATHER]},
        False,
    ),
    ("tokenize-unknown-model", 404, "POST", "/tokenize", {"model": "nope", "prompt": "x"}, False),
    ("tokenize-prompt-not-a-string", 400, "POST", "/tokenize", {"model": MODEL, "prompt": 5}, False),
    (
        "tokenize-generation-and-continue",
        400,
        "POST",
        "/tokenize",
        {"model": MODEL, "messages": MESSAGES, "add_generation_prompt": True, "continue_final_message": True},
        False,
    ),
    ("detokenize", 200, "POST", "/detokenize", {"model": MODEL, "tokens": [72, 101, 108, 108, 111]}, False),
    ("detokenize-empty", 200, "POST", "/detokenize", {"model": MODEL, "tokens": []}, False),
    ("detokenize-out-of-vocab", 200, "POST", "/detokenize", {"model": MODEL, "tokens": [10**6]}, False),
    ("detokenize-not-ints", 400, "POST", "/detokenize", {"model": MODEL, "tokens": ["a"]}, False),
    ("detokenize-unknown-model", 404, "POST", "/detokenize", {"model": "nope", "tokens": [1]}, False),
    # completions (tests/entrypoints/openai/completion)
    ("completion", 200, "POST", C, completion(), False),
    ("completion-token-ids", 200, "POST", C, completion(prompt=[0, 0, 0, 0, 0]), False),
    ("completion-batch", 200, "POST", C, completion(prompt=["Hello, my name is"] * 2), False),
    ("completion-n3-seed", 200, "POST", C, completion(n=3, temperature=1.0, seed=42, logprobs=0), False),
    ("completion-logprobs-0", 200, "POST", C, completion(logprobs=0), False),
    ("completion-logprobs-5", 200, "POST", C, completion(logprobs=5), False),
    ("completion-logprobs-21", 400, "POST", C, completion(logprobs=21), False),
    ("completion-prompt-logprobs", 200, "POST", C, completion(prompt_logprobs=1), False),
    ("completion-prompt-logprobs-negative", 400, "POST", C, completion(prompt_logprobs=-1), False),
    ("completion-echo-logprobs", 200, "POST", C, completion(echo=True, logprobs=1), False),
    ("completion-stop", 200, "POST", C, completion(max_tokens=30, stop=["e", "a"]), False),
    ("completion-max-tokens-1", 200, "POST", C, completion(max_tokens=1), False),
    ("completion-max-tokens-0", 400, "POST", C, completion(max_tokens=0), False),
    ("completion-max-tokens-negative", 400, "POST", C, completion(max_tokens=-1), False),
    ("completion-max-tokens-over-context", 400, "POST", C, completion(max_tokens=10**6), False),
    ("completion-stream", 200, "POST", C, completion(stream=True), False),
    ("completion-stream-n2", 200, "POST", C, completion(stream=True, n=2, temperature=1.0, seed=7), False),
    (
        "completion-stream-usage",
        200,
        "POST",
        C,
        completion(stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True}),
        False,
    ),
    (
        "completion-stream-options-without-stream",
        400,
        "POST",
        C,
        completion(stream_options={"include_usage": True}),
        False,
    ),
    ("completion-stream-logprobs-30", 200, "POST", C, completion(stream=True, logprobs=30), False),
    ("completion-unknown-model", 404, "POST", C, completion(model="nope"), False),
    ("completion-lora", 200, "POST", C, completion(model=LORA_NAME), False),
    ("completion-bad-temperature", 400, "POST", C, completion(temperature="hot"), False),
    ("completion-no-prompt", 400, "POST", C, {"model": MODEL, "max_tokens": 2}, False),
    ("completion-invalid-regex", 400, "POST", C, completion(structured_outputs={"regex": "[.*"}), False),
    ("completion-long-seed", 400, "POST", C, LONG_SEED_BODY, True),
    ("completion-long-seed-stream", 400, "POST", C, LONG_SEED_BODY[:-1] + ', "stream": true}', True),
    ("completion-int64-min-seed", 200, "POST", C, LONG_SEED_BODY.replace("775809", "775808"), True),
    # chat (tests/entrypoints/openai/chat_completion)
    ("chat", 200, "POST", CHAT, chat(), False),
    ("chat-n2-seed", 200, "POST", CHAT, chat(n=2, temperature=1.0, seed=3), False),
    ("chat-logprobs", 200, "POST", CHAT, chat(logprobs=True, top_logprobs=2), False),
    ("chat-top-logprobs-over-max", 400, "POST", CHAT, chat(logprobs=True, top_logprobs=21), False),
    (
        "chat-echo",
        200,
        "POST",
        CHAT,
        chat(messages=[*MESSAGES, {"role": "assistant", "content": "Sure"}], echo=True, add_generation_prompt=False),
        False,
    ),
    ("chat-stop", 200, "POST", CHAT, chat(max_tokens=30, stop=["e"]), False),
    ("chat-max-completion-tokens-0", 400, "POST", CHAT, chat(max_tokens=None, max_completion_tokens=0), False),
    ("chat-max-tokens-over-context", 400, "POST", CHAT, chat(max_tokens=10**6), False),
    ("chat-messages-not-a-list", 400, "POST", CHAT, chat(messages="hi"), False),
    ("chat-logit-bias-out-of-vocab", 400, "POST", CHAT, chat(logit_bias={"999999": 1}), False),
    ("chat-stream", 200, "POST", CHAT, chat(stream=True), False),
    (
        "chat-stream-n2-usage",
        200,
        "POST",
        CHAT,
        chat(stream=True, n=2, temperature=1.0, seed=5, stream_options={"include_usage": True}),
        False,
    ),
    ("chat-tool-required", 200, "POST", CHAT, chat(tools=[WEATHER], tool_choice="required", max_tokens=60), False),
    (
        "chat-tool-required-stream",
        200,
        "POST",
        CHAT,
        chat(tools=[WEATHER], tool_choice="required", max_tokens=60, stream=True),
        False,
    ),
    (
        "chat-tool-named-function",
        200,
        "POST",
        CHAT,
        chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=60),
        False,
    ),
    (
        "chat-tool-unknown-function",
        400,
        "POST",
        CHAT,
        chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}),
        False,
    ),
    (
        "chat-json-schema",
        200,
        "POST",
        CHAT,
        chat(
            response_format={"type": "json_schema", "json_schema": {"name": "v", "schema": VERDICT, "strict": True}},
            max_tokens=60,
        ),
        False,
    ),
    ("chat-long-seed", 400, "POST", CHAT, LONG_SEED_CHAT, True),
    # responses
    (
        "responses",
        200,
        "POST",
        "/v1/responses",
        {"model": MODEL, "input": "Say hi.", "max_output_tokens": 8, "temperature": 0},
        False,
    ),
    (
        "responses-stream",
        200,
        "POST",
        "/v1/responses",
        {"model": MODEL, "input": "Say hi.", "max_output_tokens": 8, "temperature": 0, "stream": True},
        False,
    ),
    ("responses-unknown-model", 404, "POST", "/v1/responses", {"model": "nope", "input": "x"}, False),
    # bodies that are not a JSON object (tests/entrypoints/openai/chat_completion/test_non_object_body_validation)
    ("chat-body-not-json", 400, "POST", CHAT, "this is not valid json{{{", True),
    ("chat-body-json-array", 400, "POST", CHAT, '["not", "an", "object"]', True),
    ("chat-body-json-number", 400, "POST", CHAT, "42", True),
    ("chat-body-json-null", 400, "POST", CHAT, "null", True),
    ("chat-body-empty", 400, "POST", CHAT, "", True),
    ("completion-body-not-json", 400, "POST", C, "{", True),
    ("completion-body-json-string", 400, "POST", C, '"prompt"', True),
    ("tokenize-body-not-json", 400, "POST", "/tokenize", "nope", True),
    ("detokenize-body-empty", 400, "POST", "/detokenize", "", True),
]
