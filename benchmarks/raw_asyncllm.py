"""The yardstick of the vLLM /runsync benchmark: vLLM's ``AsyncLLM`` in one process, no HTTP, no jobs.

``python -m benchmarks.raw_asyncllm MODEL_DIR`` (or ``--fake`` for ``--quick`` runs) starts the engine with the
tiny model's settings, prints ``ready``, then answers each stdin line ``N TOKENS`` by running N concurrent
requests of TOKENS tokens (``ignore_eos``) and printing ``{"tokens": ..., "seconds": ...}``.
"""

import asyncio
import json
import os
import sys
import time
import uuid

PROMPT = "The worker takes a job from the queue and"


async def _fake(n: int, tokens: int) -> int:
    async def one() -> int:
        for _ in range(tokens):
            await asyncio.sleep(0.0005)
        return tokens

    return sum(await asyncio.gather(*(one() for _ in range(n))))


async def main() -> None:
    fake = sys.argv[1] == "--fake"
    llm = None
    if not fake:
        from vllm import AsyncEngineArgs, SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=2048,
                               kv_cache_memory_bytes=64 << 20)  # fmt: skip
        llm = AsyncLLM.from_engine_args(args)
        ids = llm.renderer.get_tokenizer().encode(PROMPT)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        n, tokens = (int(x) for x in line.split())
        t0 = time.monotonic()
        if llm is None:
            total = await _fake(n, tokens)
        else:
            params = SamplingParams(max_tokens=tokens, ignore_eos=True, output_kind=RequestOutputKind.FINAL_ONLY)

            async def one(params: SamplingParams = params) -> int:
                last = None
                async for out in llm.generate(TokensPrompt(prompt_token_ids=ids), params, uuid.uuid4().hex):
                    last = out
                return len(last.outputs[0].token_ids) if last is not None else 0

            total = sum(await asyncio.gather(*(one() for _ in range(n))))
        print(json.dumps({"tokens": total, "seconds": time.monotonic() - t0}), flush=True)
    if llm is not None:
        llm.shutdown()
    os._exit(0)  # vLLM's engine threads would hold the exit


if __name__ == "__main__":
    asyncio.run(main())
