"""A real vLLM logits processor that raises inside the engine, for the engine-death tests.

A request asks for it with ``sampling_params.extra_args = {"raise_after": N}``: once that request has N output
tokens, ``apply`` raises in the EngineCore process, as a crashing kernel or CUDA running out of memory would.
Loaded by the engine (``LOGITS_PROCESSORS='["tests.vllm.faulty:RaiseAfter"]'``), in its own process.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality


class RaiseAfter(LogitsProcessor):
    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.armed: dict[int, tuple[int, list[int]]] = {}  # batch index -> (tokens before raising, output ids)

    def is_argmax_invariant(self) -> bool:
        return False  # or vLLM skips apply() for greedy requests

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.armed.pop(index, None)
        for index, params, _, output_ids in batch_update.added:
            after = (params.extra_args or {}).get("raise_after") if params is not None else None
            if after is not None:
                self.armed[index] = (int(after), output_ids)
            else:
                self.armed.pop(index, None)
        for a, b, direction in batch_update.moved:
            ea, eb = self.armed.pop(a, None), self.armed.pop(b, None)
            if ea is not None:
                self.armed[b] = ea
            if eb is not None and direction is MoveDirectionality.SWAP:
                self.armed[a] = eb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for after, output_ids in self.armed.values():
            if len(output_ids) >= after:
                raise RuntimeError("logits processor RaiseAfter raised inside the engine (on purpose)")
        return logits
