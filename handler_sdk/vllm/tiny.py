"""A tiny random-weight Llama, built locally so the vLLM handler runs with no download and no GPU.

The model is about 1.4 MB and takes seconds to build. Its weights are random, so it writes gibberish: it exists
to exercise the serving path (tokenizer, chat template, engine, streaming, metrics), never to answer anything.

Build one into a folder::

    python -m handler_sdk.vllm.tiny DIR
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["TINY_MODEL_NAME", "build_tiny_lora", "build_tiny_model", "default_tiny_dir", "ensure_tiny_model", "main"]

log = logging.getLogger(__name__)

TINY_MODEL_NAME = "tiny-llama"
# Written last, so a folder without it is a build that did not finish.
_MARKER = "handler_sdk_tiny.txt"

_CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)

# Enough varied text for byte-level BPE to learn a few hundred merges; the words themselves do not matter.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A serverless worker takes jobs from a queue, runs them and reports the result.",
    "Tokens stream back to the client as the engine generates them.",
    "user: hello there, how are you today?",
    "assistant: I am a tiny model and I write gibberish.",
    "Metrics report throughput, cache usage and the number of running requests.",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \" _ # @ & % $",
]


def default_tiny_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the handler keeps the tiny model when ``MODEL_NAME`` is unset: ``$HANDLER_SDK_CACHE/tiny-llama``,
    else ``~/.cache/handler_sdk/tiny-llama``."""
    env = os.environ if env is None else env
    root = env.get("HANDLER_SDK_CACHE") or os.path.join(Path.home(), ".cache", "handler_sdk")
    return Path(root) / TINY_MODEL_NAME


def _build_into(path: Path, seed: int) -> None:
    # Heavy imports stay here: importing the package must not pull in torch's model zoo.
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    # transformers is only partly typed; these calls are checked by building and loading the model in tests.
    hf: Any = transformers

    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = hf.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", model_max_length=2048
    )
    fast.chat_template = _CHAT_TEMPLATE
    fast.save_pretrained(path)

    # head_dim 64: the CPU attention kernel rejects small head sizes such as 16.
    cfg = hf.LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
        dtype="float32",
    )
    torch.manual_seed(seed)
    hf.LlamaForCausalLM(cfg).save_pretrained(path)


def build_tiny_model(path: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Build the tiny model into ``path`` (created; an existing build there is replaced) and return it.

    The build goes to a sibling temporary folder that is renamed into place, so a reader never sees half a
    model, and two processes building at once both end with a complete one.
    """
    dest = Path(path).expanduser().resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is often shared (a volume, an image layer)
    try:
        _build_into(tmp, seed)
        (tmp / _MARKER).write_text("random weights: this model writes gibberish\n")
        if dest.exists():
            shutil.rmtree(dest)
        try:
            tmp.rename(dest)
        except OSError:
            # Another process renamed its build in first; theirs is as good as ours.
            if not (dest / _MARKER).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def build_tiny_lora(path: str | os.PathLike[str], *, rank: int = 8, seed: int = 1) -> Path:
    """Build a LoRA adapter for the tiny model into ``path``: q_proj and v_proj of both layers, in peft's format.

    Its B matrices are random, not zero as peft initialises them: a zero B changes nothing, and an adapter that
    changes nothing cannot show that it was applied. ``rank`` must be one vLLM accepts (8, 16, 32, ...).
    """
    import torch
    from safetensors.torch import save_file

    from .. import codec

    dest = Path(path).expanduser().resolve()
    dest.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    shapes = {"q_proj": (128, 128), "v_proj": (64, 128)}  # (out, in) of the tiny model's projections
    tensors = {}
    for layer in range(2):
        for name, (out_dim, in_dim) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, in_dim, generator=gen) * 0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(out_dim, rank, generator=gen) * 0.5
    save_file(tensors, str(dest / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
        "target_modules": sorted(shapes), "bias": "none", "fan_in_fan_out": False, "base_model_name_or_path": None,
    }  # fmt: skip
    (dest / "adapter_config.json").write_bytes(codec.dumps(config))
    return dest


def ensure_tiny_model(path: str | os.PathLike[str] | None = None) -> Path:
    """Return the tiny model's folder, building it first when no complete build is there."""
    dest = Path(path).expanduser().resolve() if path is not None else default_tiny_dir()
    if (dest / _MARKER).exists():
        return dest
    log.warning("building the tiny random-weight model into %s (it writes gibberish)", dest)
    return build_tiny_model(dest)


def main(argv: list[str] | None = None) -> int:
    """``python -m handler_sdk.vllm.tiny DIR``: build the tiny model into DIR."""
    parser = argparse.ArgumentParser(
        prog="python -m handler_sdk.vllm.tiny",
        description="Build a tiny random-weight Llama (about 1.4 MB; it writes gibberish) for tests and demos.",
    )
    parser.add_argument("dir", nargs="?", default=None, help=f"target folder (default: {default_tiny_dir()})")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    args = parser.parse_args(argv)
    dest = build_tiny_model(args.dir if args.dir is not None else default_tiny_dir(), seed=args.seed)
    print(dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
