"""A generator handler: each yield is one stream item; Chunk adds metrics, Final sets the final output.

python -m handler_sdk.serve examples/streaming.py --test-input '{"input": {"words": 5}}'
"""

import asyncio

from handler_sdk import Chunk, Final, handler


@handler(concurrency=4)
async def count_words(job):
    n = int(job.input.get("words", 3))
    for i in range(n):
        await asyncio.sleep(0.01)
        yield Chunk({"word": f"w{i}"}, metrics={"words_so_far": i + 1})
    yield Final({"total": n})
