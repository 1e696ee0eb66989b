"""A stand-in for the vLLM handler in ``--quick`` runs: it answers the same two job shapes without an engine.

* ``{"openai_route": "/v1/completions", "openai_input": {..., "stream": true}}``: one SSE event per token, a
  usage event, ``data: [DONE]``, then the ``{"status_code", "body"}`` final, as ``handler_sdk.vllm`` does; not
  streamed, a chat answer (a tool call when the request offers tools, else a JSON object);
* ``{"prompt": ..., "sampling_params": {"max_tokens": n}, "stream": true}``: one item per token with
  ``output_tokens``.

Its figures mean nothing; it lets the smoke test drive the streaming benchmark's client code in seconds.
"""

import asyncio
import json

from handler_sdk import Chunk, Final, handler

TOKEN_DELAY_S = 0.0005


@handler(concurrency=32)
async def fake_llm(job):
    inp = job.input
    if "openai_route" in inp:
        body = inp.get("openai_input") or {}
        n = int(body.get("max_tokens", 16))
        if not body.get("stream"):  # a chat answer: a tool call when tools are offered, else a JSON verdict
            await asyncio.sleep(TOKEN_DELAY_S * 8)
            call = {
                "type": "function",
                "id": "c0",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
            message = (
                {"role": "assistant", "content": None, "tool_calls": [call]}
                if body.get("tools")
                else {"role": "assistant", "content": '{"answer": "yes"}'}
            )
            usage = {"prompt_tokens": 4, "completion_tokens": 8, "total_tokens": 12}
            answer = {"object": "chat.completion", "choices": [{"index": 0, "message": message}], "usage": usage}
            yield Final({"status_code": 200, "body": answer})
            return
        for i in range(n):
            await asyncio.sleep(TOKEN_DELAY_S)
            event = {"object": "text_completion", "choices": [{"index": 0, "text": f"t{i} "}]}
            yield "data: " + json.dumps(event) + "\n\n"
        usage = {"prompt_tokens": 4, "completion_tokens": n, "total_tokens": n + 4}
        yield "data: " + json.dumps({"object": "text_completion", "choices": [], "usage": usage}) + "\n\n"
        yield "data: [DONE]\n\n"
        yield Final({"status_code": 200, "body": None})
        return
    n = int(inp.get("sampling_params", {}).get("max_tokens", 16))
    for i in range(n):
        await asyncio.sleep(TOKEN_DELAY_S)
        yield Chunk({"text": [f"t{i} "], "input_tokens": 4 if i == 0 else 0, "output_tokens": 1})
    yield Final({"text": ["..."], "input_tokens": 4, "output_tokens": n})
