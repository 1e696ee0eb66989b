"""Engine configuration from environment variables (the worker-vllm convention).

* ``MODEL_NAME`` (hub id or local path) and ``TOKENIZER_NAME`` map to ``model`` and ``tokenizer``.
* Every other ``AsyncEngineArgs`` field is read from its upper-case name (``MAX_MODEL_LEN``, ``DTYPE``,
  ``ENFORCE_EAGER=true``, ``KV_CACHE_MEMORY_BYTES``, ...) and converted to the field's type; JSON for lists,
  dicts and config objects. A value that does not convert raises ConfigError naming the variable, so a typo
  fails start-up instead of being served with a default. An empty value counts as unset.
* The handler's own knobs: ``MAX_CONCURRENCY`` (30), ``DEFAULT_BATCH_SIZE`` (50), ``MIN_BATCH_SIZE`` (1),
  ``BATCH_SIZE_GROWTH_FACTOR`` (3) and ``OPENAI_SERVED_MODEL_NAME_OVERRIDE``.
* What vLLM's server reads as front-end flags (``ServingOptions``): ``ENABLE_AUTO_TOOL_CHOICE``,
  ``TOOL_CALL_PARSER``, ``CHAT_TEMPLATE`` (a path or the template text; ``CUSTOM_CHAT_TEMPLATE`` is worker-vllm's
  name for it), ``REASONING_PARSER`` (an engine field too) and ``LORA_MODULES``.

Without ``MODEL_NAME`` the handler serves the tiny random-weight model (see ``tiny``) with CPU-friendly defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from .. import codec
from ..errors import ConfigError
from .envtable import check_refused
from .tiny import TINY_MODEL_NAME, default_tiny_dir

__all__ = ["BatchPolicy", "EngineConfig", "ServingOptions", "engine_kwargs_from_env"]

# Names that are engine fields but too generic to claim from the environment: MODEL and TOKENIZER come in as
# MODEL_NAME and TOKENIZER_NAME; LOG_LEVEL is commonly set for other programs with other values.
_NOT_FROM_ENV = frozenset({"model", "tokenizer", "log_level"})
_ALIASES = {"MODEL_NAME": "model", "TOKENIZER_NAME": "tokenizer", "MODEL_REVISION": "revision"}
_NONE = frozenset({"none", "null"})

# The tiny model on a CPU: fp32, no graph capture, and an explicit KV pool (without one vLLM reads
# gpu_memory_utilization as a share of host memory and start-up fails). Any of these can be overridden by env.
TINY_ENGINE_DEFAULTS: dict[str, Any] = {
    "dtype": "float32",
    "enforce_eager": True,
    "max_model_len": 2048,
    "kv_cache_memory_bytes": 64 << 20,
}


@dataclasses.dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How many tokens go in each stream item: ``min_size``, then times ``growth`` per item, up to ``max_size``.

    Small first items give a fast first token; larger later ones keep per-item overhead low. A consumer that
    falls behind gets larger items still, because the engine's deltas merge while it waits.
    """

    min_size: int = 1
    max_size: int = 50
    growth: float = 3.0

    def __post_init__(self) -> None:
        if self.min_size < 1:
            raise ConfigError(f"the minimum batch size must be >= 1, got {self.min_size}")
        if self.max_size < self.min_size:
            raise ConfigError(f"the batch size {self.max_size} is below the minimum batch size {self.min_size}")
        if self.growth < 1:
            raise ConfigError(f"the batch size growth factor must be >= 1, got {self.growth}")

    def sizes(self) -> Iterator[int]:
        """Target token count of each successive item: 1, 3, 9, 27, 50, 50, ... with the defaults."""
        size = float(self.min_size)
        while True:
            yield min(self.max_size, int(size))
            size = min(float(self.max_size), size * self.growth)


@dataclasses.dataclass(frozen=True, slots=True)
class LoRAModule:
    """One adapter of ``LORA_MODULES``: the name clients choose it by, and its path or hub id."""

    name: str
    path: str
    base_model_name: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ServingOptions:
    """The OpenAI front end's settings (vLLM's server flags of the same names)."""

    enable_auto_tools: bool = False
    tool_parser: str | None = None
    chat_template: str | None = None
    reasoning_parser: str | None = None
    lora_modules: tuple[Any, ...] = ()  # vLLM's LoRAModulePath, built when the engine starts
    response_role: str = "assistant"
    trust_request_chat_template: bool = False
    return_tokens_as_token_ids: bool = False
    exclude_tools_when_tool_choice_none: bool = False
    enable_prompt_tokens_details: bool = False
    enable_force_include_usage: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServingOptions:
        enable_auto = env_bool(env, "ENABLE_AUTO_TOOL_CHOICE")
        parser = _get(env, "TOOL_CALL_PARSER")
        if enable_auto and parser is None:
            raise ConfigError("ENABLE_AUTO_TOOL_CHOICE=true needs TOOL_CALL_PARSER (for example hermes)")
        return cls(
            enable_auto_tools=enable_auto,
            tool_parser=parser,
            chat_template=_get(env, "CHAT_TEMPLATE") or _get(env, "CUSTOM_CHAT_TEMPLATE"),
            reasoning_parser=_get(env, "REASONING_PARSER"),
            lora_modules=tuple(lora_modules_from_env(env)),
            response_role=_get(env, "OPENAI_RESPONSE_ROLE") or "assistant",
            trust_request_chat_template=env_bool(env, "TRUST_REQUEST_CHAT_TEMPLATE"),
            return_tokens_as_token_ids=env_bool(env, "RETURN_TOKENS_AS_TOKEN_IDS"),
            exclude_tools_when_tool_choice_none=env_bool(env, "EXCLUDE_TOOLS_WHEN_TOOL_CHOICE_NONE"),
            enable_prompt_tokens_details=env_bool(env, "ENABLE_PROMPT_TOKENS_DETAILS"),
            enable_force_include_usage=env_bool(env, "ENABLE_FORCE_INCLUDE_USAGE"),
        )


def env_bool(env: Mapping[str, str], name: str) -> bool:
    """A boolean env var (true/false, 1/0, yes/no, on/off); unset is false; ConfigError naming it otherwise."""
    raw = _get(env, name)
    if raw is None:
        return False
    try:
        return TypeAdapter(bool).validate_strings(raw)
    except ValidationError:
        raise ConfigError(f"{name}={raw!r} is not a boolean (true/false)") from None


def lora_modules_from_env(env: Mapping[str, str]) -> list[LoRAModule]:
    """``LORA_MODULES``: a JSON list of ``{"name", "path"[, "base_model_name"]}``, one such object, or
    ``name=path`` pairs separated by spaces (vLLM's ``--lora-modules`` forms)."""
    raw = _get(env, "LORA_MODULES")
    if raw is None:
        return []
    if raw.lstrip()[:1] in ("[", "{"):
        try:
            value = codec.loads(raw)
        except ValueError as e:
            raise ConfigError(f"LORA_MODULES is not valid JSON: {e}") from None
        items = value if isinstance(value, list) else [value]
        out = []
        for item in items:
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("name"), str)
                or not isinstance(item.get("path"), str)
            ):
                raise ConfigError(f'LORA_MODULES: each adapter needs a "name" and a "path", got {item!r}')
            out.append(LoRAModule(item["name"], item["path"], item.get("base_model_name")))
        return out
    out = []
    for pair in raw.split():
        name, eq, path = pair.partition("=")
        if not eq or not name or not path:
            raise ConfigError(f"LORA_MODULES: {pair!r} is not name=path (or use the JSON form)")
        out.append(LoRAModule(name, path))
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything the engine and the ready-made handler read from the environment.

    ``engine_kwargs`` become ``AsyncEngineArgs(**engine_kwargs)``. ``tiny`` is true when ``MODEL_NAME`` is
    unset: the model at ``engine_kwargs["model"]`` is the tiny one, built there on first start.
    """

    engine_kwargs: dict[str, Any]
    served_model_name: str
    max_concurrency: int = 30
    batch: BatchPolicy = dataclasses.field(default_factory=BatchPolicy)
    tiny: bool = False
    serving: ServingOptions = dataclasses.field(default_factory=ServingOptions)

    @property
    def model(self) -> str:
        return str(self.engine_kwargs["model"])

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EngineConfig:
        """Read the configuration from ``env`` (default ``os.environ``); raises ConfigError on a bad value."""
        env = os.environ if env is None else env
        check_refused(env)
        user = engine_kwargs_from_env(env)
        for key in ("model", "tokenizer"):
            if key in user:
                user[key] = resolve_cached(str(user[key]), env)
        tiny = "model" not in user
        kwargs = dict(user)
        if tiny:
            kwargs = {**TINY_ENGINE_DEFAULTS, "model": str(default_tiny_dir(env)), **user}
            if _get(env, "VLLM_CPU_KVCACHE_SPACE") and "kv_cache_memory_bytes" not in user:
                # The user sized the CPU KV pool their way; ours would override it.
                del kwargs["kv_cache_memory_bytes"]
        # vLLM's own SERVED_MODEL_NAME (a name or a JSON list) counts too; the override wins over both.
        override = _get(env, "OPENAI_SERVED_MODEL_NAME_OVERRIDE")
        engine_names = user.get("served_model_name")
        first = engine_names[0] if isinstance(engine_names, list) and engine_names else engine_names
        served = override or first or _get(env, "MODEL_NAME") or TINY_MODEL_NAME
        kwargs["served_model_name"] = served if override or not engine_names else engine_names
        max_size = env_int(env, "DEFAULT_BATCH_SIZE", 50)
        # worker-vllm's names (DEFAULT_MIN_BATCH_SIZE, ...) and the shorter ones both work.
        min_name = "MIN_BATCH_SIZE" if _get(env, "MIN_BATCH_SIZE") else "DEFAULT_MIN_BATCH_SIZE"
        growth_name = (
            "BATCH_SIZE_GROWTH_FACTOR" if _get(env, "BATCH_SIZE_GROWTH_FACTOR") else "DEFAULT_BATCH_SIZE_GROWTH_FACTOR"
        )
        batch = _policy(env_int(env, min_name, 1), max_size, env_float(env, growth_name, 3.0))
        return cls(
            engine_kwargs=kwargs,
            served_model_name=served,
            max_concurrency=env_int(env, "MAX_CONCURRENCY", 30),
            batch=batch,
            tiny=tiny,
            serving=ServingOptions.from_env(env),
        )


def runpod_hub_cache(env: Mapping[str, str]) -> Path:
    """runpod's cache of hub models on a network volume: ``$BASE_PATH/huggingface-cache/hub``, BASE_PATH
    defaulting to ``/runpod-volume`` as in worker-vllm."""
    return Path(_get(env, "BASE_PATH") or "/runpod-volume") / "huggingface-cache" / "hub"


def resolve_cached(name: str, env: Mapping[str, str]) -> str:
    """A hub id found in runpod's cache becomes its local snapshot folder, so it loads with no network;
    anything else (a local path, a model that cache lacks) is left for vLLM and Hugging Face to find."""
    if name.count("/") != 1 or Path(name).exists():
        return name
    cache = runpod_hub_cache(env)
    repo = cache / ("models--" + name.replace("/", "--"))
    if not repo.is_dir():
        return name
    revision = _get(env, "MODEL_REVISION") or _get(env, "REVISION") or "main"
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    if not snapshot.is_dir():
        raise ConfigError(f"{name!r} is in the model cache {cache} but has no snapshot for revision {revision!r}")
    return str(snapshot)


def _policy(min_size: int, max_size: int, growth: float) -> BatchPolicy:
    try:
        return BatchPolicy(min_size, max_size, growth)
    except ConfigError as e:
        raise ConfigError(f"MIN_BATCH_SIZE / DEFAULT_BATCH_SIZE / BATCH_SIZE_GROWTH_FACTOR: {e}") from None


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value is not None and value.strip() != "" else None


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 1) -> int:
    """An integer env var of at least ``minimum``; ConfigError naming the variable otherwise."""
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be >= {minimum}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


@functools.cache
def _engine_fields() -> dict[str, tuple[str, Any]]:
    """ENV_NAME -> (field name, resolved type or None when vLLM's annotation does not resolve)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    namespace = vars(sys.modules[AsyncEngineArgs.__module__])
    out: dict[str, tuple[str, Any]] = {}
    for f in dataclasses.fields(AsyncEngineArgs):
        if f.name.startswith("_") or f.name in _NOT_FROM_ENV:
            continue
        hint: Any = f.type
        if isinstance(hint, str):
            try:
                hint = typing._eval_type(typing.ForwardRef(hint), namespace, None)  # type: ignore[attr-defined]
            except Exception:  # a name only imported under TYPE_CHECKING in vLLM
                hint = None
        out[f.name.upper()] = (f.name, hint)
    for env_name, field in _ALIASES.items():
        out[env_name] = (field, str)
    return out


def _allows_none(hint: Any) -> bool:
    return hint is None or type(None) in typing.get_args(hint)


@functools.cache
def _adapter(hint: Any) -> TypeAdapter[Any] | None:
    try:
        return TypeAdapter(hint, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:  # a type pydantic cannot describe (a callable, a torch dtype): taken as str or JSON
        return None


def convert(name: str, raw: str, hint: Any) -> Any:
    """Convert one env value to ``hint``. JSON text (``{...}``/``[...]``) is parsed as JSON first."""
    if raw.strip().lower() in _NONE and _allows_none(hint):
        return None
    looks_json = raw.lstrip()[:1] in ("{", "[")
    adapter = _adapter(hint) if hint is not None else None
    if adapter is None:
        if not looks_json:
            return raw
        try:
            return codec.loads(raw)
        except ValueError as e:
            raise ConfigError(f"{name}={raw!r} is not valid JSON: {e}") from None
    # validate_json last: a Literal of ints (MAX_LORA_RANK) takes "8" only as JSON.
    attempts = [adapter.validate_json, adapter.validate_strings] if looks_json else [adapter.validate_strings,
                                                                                     adapter.validate_json]  # fmt: skip
    first: ValidationError | None = None
    for attempt in attempts:
        try:
            return attempt(raw)
        except ValidationError as e:
            first = first or e
    assert first is not None
    err = first.errors()[0]
    raise ConfigError(f"{name}={raw!r} is invalid: {err['msg']}") from None


def engine_kwargs_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``AsyncEngineArgs`` keyword arguments for every engine field set in ``env``, converted to its type."""
    out: dict[str, Any] = {}
    for env_name, (field, hint) in _engine_fields().items():
        raw = _get(env, env_name)
        if raw is not None:
            out[field] = convert(env_name, raw, hint)
    return out
