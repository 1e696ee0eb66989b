"""Your own LLM handler on the vLLM adapter: your input schema and prompt, vLLM's streaming and metrics.

    MODEL_NAME=Qwen/Qwen3-0.6B python -m handler_sdk.serve examples/vllm_custom.py \\
        --test-input '{"input": {"question": "Why is the sky blue?"}}'

Without MODEL_NAME it runs on the tiny test model, which writes gibberish.
"""

from pydantic import BaseModel, Field

from handler_sdk import Job, handler
from handler_sdk.vllm import Engine, GenerateRequest


class Ask(BaseModel):
    question: str
    max_tokens: int = Field(default=128, ge=1, le=1024)


# Engine.start builds the engine from the environment once, before the first job; job.state is the Engine.
@handler(concurrency=16, setup=Engine.start, input_model=Ask)
async def answer(job: Job):
    ask: Ask = job.input
    request = GenerateRequest(
        messages=[
            {"role": "system", "content": "Answer in one short paragraph."},
            {"role": "user", "content": ask.question},
        ],
        sampling_params={"max_tokens": ask.max_tokens, "temperature": 0.3},
        stream=True,
    )
    # Token batches with engine metrics on /stream, then {"text", "input_tokens", "output_tokens"} on /status.
    async for item in job.state.generate(request, job.id):
        yield item
