"""One generation job on the engine: render the prompt, batch the streamed tokens, and sum up the usage.

vLLM streams deltas (``RequestOutputKind.DELTA``) into a per-request collector that merges them while nobody
reads, so the engine never waits for us. We read a delta, add it to the pending item, and yield the item once it
holds the policy's next batch size (1, 3, 9, ... tokens). While the runtime sends an item (and waits on the
network), deltas pile up in the collector and arrive merged: the next item is then larger than planned, which is
how the batch grows when the consumer falls behind. Tokens are counted from ``token_ids``, never by counting
outputs, because one merged output holds many tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from jinja2 import TemplateError
from vllm.exceptions import VLLMClientError
from vllm.inputs import TextPrompt
from vllm.renderers.params import ChatParams
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

from ..errors import InvalidInput
from ..outputs import Chunk, Final

if TYPE_CHECKING:
    from vllm.renderers.chat_utils import ChatCompletionMessageParam
    from vllm.v1.engine.async_llm import AsyncLLM

    from .engine import Engine
    from .inputs import GenerateRequest

__all__ = ["generate", "render"]

# The template must end on the assistant's turn, or the model continues the user's message.
_CHAT = ChatParams(chat_template_kwargs={"add_generation_prompt": True})


async def render(llm: AsyncLLM, request: GenerateRequest, chat_template: str | None = None) -> Any:
    """The engine input for a prompt (tokenized as is, or as one user message with ``apply_chat_template``) or
    for messages (the chat template applied first: ``chat_template`` if given, else the model's)."""
    try:
        messages = request.messages
        if messages is None and request.apply_chat_template:
            messages = [{"role": "user", "content": request.prompt or ""}]
        if messages is not None:
            chat = _CHAT if chat_template is None else replace(_CHAT, chat_template=chat_template)
            typed = cast("list[ChatCompletionMessageParam]", messages)
            _, prompts = await llm.renderer.render_chat_async([typed], chat)
        else:
            prompts = await llm.renderer.render_cmpl_async([TextPrompt(prompt=request.prompt or "")])
    except (VLLMClientError, TemplateError, ValueError, TypeError, KeyError) as e:
        field = "messages" if request.messages is not None else "prompt"
        raise InvalidInput(f"{field}: {e}") from e
    return prompts[0]


class _Pending:
    """Text, tokens and (when asked for) logprobs gathered since the last stream item, one slot per choice."""

    def __init__(self, n: int, logprobs: bool) -> None:
        self.text = [""] * n
        self.tokens = 0
        self.logprobs: list[list[dict[str, Any]]] | None = [[] for _ in range(n)] if logprobs else None

    def take(self) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {"text": self.text}
        if self.logprobs is not None:
            out["logprobs"] = self.logprobs
            self.logprobs = [[] for _ in range(len(self.text))]
        tokens = self.tokens
        self.text, self.tokens = [""] * len(self.text), 0
        return out, tokens


def _sampled(choice: Any) -> list[dict[str, Any]]:
    """The sampled token's entry of each step's logprobs: ``{"token", "logprob"}``."""
    entries = []
    for token_id, step in zip(choice.token_ids, choice.logprobs or (), strict=False):
        lp = step.get(token_id)
        if lp is not None:
            entries.append({"token": lp.decoded_token, "logprob": lp.logprob})
    return entries


async def generate(engine: Engine, request: GenerateRequest, request_id: str) -> AsyncIterator[Chunk | Final]:
    """Run ``request``; yields ``Chunk`` stream items when ``request.stream``, and always a ``Final`` with
    ``{"text": [one str per choice], "input_tokens": n, "output_tokens": m}``.

    Each item's output is ``{"text", "input_tokens", "output_tokens"}`` for that item alone (input_tokens is the
    prompt length on the first item and 0 after), and its metrics add the engine-wide figures. The items'
    output_tokens add up to the final total. Closing or cancelling this generator aborts the vLLM request.
    """
    params = request.params()
    sizes = request.batch_policy(engine.config.batch).sizes()
    lora = await engine.lora_request(request.lora)
    prompt = await render(engine.llm, request, engine.chat_template)
    n = params.n
    full = [""] * n
    with_logprobs = params.logprobs is not None
    pending = _Pending(n, with_logprobs)
    all_logprobs: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    input_tokens = output_tokens = items = 0
    target = next(sizes)
    outputs = engine.llm.generate(prompt, params, request_id, lora_request=lora)
    try:
        async for out in outputs:
            input_tokens = len(out.prompt_token_ids or ())
            for choice in out.outputs:
                # With n > 1 a delta holds only the choices that advanced; index says which.
                full[choice.index] += choice.text
                pending.text[choice.index] += choice.text
                pending.tokens += len(choice.token_ids)
                if pending.logprobs is not None:
                    entries = _sampled(choice)
                    pending.logprobs[choice.index] += entries
                    all_logprobs[choice.index] += entries
            if request.stream and pending.tokens and (pending.tokens >= target or out.finished):
                item, tokens = pending.take()
                output_tokens += tokens
                first = input_tokens if items == 0 else 0
                items += 1
                target = next(sizes)
                metrics = {**engine.metrics(), "input_tokens": first, "output_tokens": tokens}
                yield Chunk({**item, "input_tokens": first, "output_tokens": tokens}, metrics=metrics)
    except VLLMClientError as e:
        raise InvalidInput(str(e)) from e
    except (EngineDeadError, EngineGenerateError) as e:
        if engine.dead:
            raise engine.death() from e
        raise
    finally:
        await outputs.aclose()
    output_tokens += pending.tokens
    final: dict[str, Any] = {"text": full, "input_tokens": input_tokens, "output_tokens": output_tokens}
    if with_logprobs:
        final["logprobs"] = all_logprobs
    yield Final(final)
