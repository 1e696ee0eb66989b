"""Dynamic batching: one call embeds up to 32 texts, as a GPU model runs a batch for about the cost of one input.

The handler gets a list (here of validated models: the parameter is annotated ``list[Text]``) and returns one
output per job, in the same order. A batch starts when 32 jobs wait, or 10 ms after its first job was taken.

    python -m handler_sdk.serve examples/batching.py --test-input '{"input": {"text": "hello batch"}}'
    python -m handler_sdk.serve examples/batching.py --test-input '{"input": {"text": "forbidden"}}'  # FAILED, alone
"""

import math
import time

from pydantic import BaseModel, Field

from handler_sdk import handler


class Text(BaseModel):
    text: str = Field(min_length=1)


def _embed(texts: list[str]) -> list[list[float]]:
    # Stands in for model(tokenizer(texts)): a fixed cost per call, a small one per item.
    time.sleep(0.02 + 0.0002 * len(texts))
    return [[math.sin(len(t) + k) for k in range(4)] for t in texts]


@handler(batch_size=32, batch_wait_ms=10)
def embed(items: list[Text]):
    vectors = _embed([i.text for i in items])
    # An item may fail alone: return the exception (or {"error": ...}) in its place.
    return [ValueError("refusing to embed 'forbidden'") if i.text == "forbidden" else {"embedding": v}
            for i, v in zip(items, vectors, strict=True)]  # fmt: skip
