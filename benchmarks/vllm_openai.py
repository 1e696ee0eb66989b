"""Benchmark 13: tool calls and ``json_schema`` requests through /openai, against vLLM's own OpenAI server.

One tiny CPU model (``python -m handler_sdk.vllm.tiny DIR``), the same engine and serving settings on both sides
(float32, eager, max_model_len 2048, ``VLLM_CPU_KVCACHE_SPACE=1``, the ``hermes`` tool parser with auto tool
choice, compact JSON: ``{"backend": "xgrammar", "disable_any_whitespace": true}`` as the structured-outputs
config), the same non-streamed chat requests at temperature 0 with a logit bias (-100 on whitespace, +100 on
end-of-sequence where the grammar allows it), so both sides generate the same short answers; random weights at
temperature 0 otherwise pad the JSON with whitespace or add call after call, up to ``max_tokens``:

* tool call: one tool with a bounded schema (an enum), ``tool_choice: "required"``;
* ``json_schema``: ``response_format`` with a strict schema of one enum field.

(a) vLLM's own server, ``python -m vllm.entrypoints.openai.api_server``; (b) ``python -m handler_sdk.serve
handler_sdk.vllm`` through ``/v2/local/openai/v1/chat/completions``. Requests/s is a wave's answered requests
(CONCURRENCY clients, each PER_CLIENT requests in a row) over its wall time; the two are measured in alternating
rounds, one at a time. CPU per request is the CPU time (user + system, /proc) that a wave cost the server's
process group (its front end and vLLM's EngineCore) over its requests, and the front end's share alone.

Target: (b) >= 0.95 x (a) requests/s, for each kind.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .common import (
    Proc,
    Run,
    Section,
    Target,
    ratios,
    stop_all,
)
from .vllm_pair import MODEL, WEATHER, start_pair

__all__ = ["run"]

CONCURRENCY = 8
PER_CLIENT = 12
ROUNDS = 5
MESSAGES = [{"role": "user", "content": "What is the weather in the city?"}]
VERDICT = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}
BASE = {"model": MODEL, "messages": MESSAGES, "max_tokens": 200, "temperature": 0}
KINDS = {
    "tool call": {**BASE, "tools": [WEATHER], "tool_choice": "required"},
    "json_schema": {
        **BASE,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "verdict", "schema": VERDICT, "strict": True},
        },
    },
}
STRUCTURED = '{"backend": "xgrammar", "disable_any_whitespace": true}'
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Wave:
    requests: int = 0
    seconds: float = 0.0
    tokens: int = 0
    unfit: int = 0  # answers without the tool call or the JSON asked for (cut at max_tokens)
    cpu_all: float = 0.0  # seconds of CPU, the server's whole process group
    cpu_front: float = 0.0  # seconds of CPU, its front-end process alone

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else float("nan")


@dataclass
class _Side:
    key: str
    label: str
    url: str
    proc: Proc
    extra: dict[str, Any] = field(default_factory=dict)  # request fields added for this model (the same for both)
    waves: dict[str, list[Wave]] = field(default_factory=dict)


def _cpu(pgid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of every process in the group ``pgid``, and of its leader alone."""
    total = front = 0.0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...; utime is field 14
        if int(fields[2]) != pgid:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / _TICK
        total += seconds
        if int(d) == pgid:
            front = seconds
    return total, front


def _check(kind: str, reply: dict[str, Any]) -> bool:
    """Whether the answer has what its kind asks for: a parsed call of the tool, or content that parses."""
    message = reply["choices"][0]["message"]
    if kind == "tool call":
        calls = message.get("tool_calls") or []
        return bool(calls) and calls[0]["function"]["name"] == "get_weather"
    try:
        orjson.loads(message["content"])
    except (orjson.JSONDecodeError, TypeError):
        return False
    return True


async def _wave(side: _Side, kind: str, clients: int, per_client: int) -> Wave:
    w = Wave()
    body = orjson.dumps({**KINDS[kind], **side.extra})
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as s:

        async def client() -> None:
            for _ in range(per_client):
                async with s.post(side.url, data=body, headers=headers) as r:
                    raw = await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{side.label} answered {r.status}: {raw[:300]!r}")
                reply = orjson.loads(raw)
                w.tokens += int(reply["usage"]["completion_tokens"])
                w.unfit += not _check(kind, reply)
                w.requests += 1

        cpu0 = _cpu(side.proc.pid)
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        w.seconds = time.perf_counter() - t0
        cpu1 = _cpu(side.proc.pid)
    w.cpu_all, w.cpu_front = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    return w


def _start(run: Run, work: Path) -> list[_Side]:
    p = start_pair(
        run,
        work,
        max_model_len=2048,
        vllm_flags=[
            "--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--structured-outputs-config", STRUCTURED,
            "--disable-log-stats",
        ],
        serve_env={
            "ENABLE_AUTO_TOOL_CHOICE": "true", "TOOL_CALL_PARSER": "hermes", "STRUCTURED_OUTPUTS_CONFIG": STRUCTURED,
            "DISABLE_LOG_STATS": "true",
        },
    )  # fmt: skip
    if p.model is None:
        url = f"{p.serve_v1}/chat/completions"
        return [
            _Side("vllm", "(a) yardstick [quick: the fake engine again]", url, p.serve),
            _Side("ours", "(b) serve /openai", url, p.serve),
        ]
    extra = {"logit_bias": _bias(p.model)}
    return [
        _Side("vllm", "(a) vLLM's own OpenAI server", f"{p.vllm_v1}/chat/completions", p.vllm, extra),
        _Side("ours", "(b) serve /openai", f"{p.serve_v1}/chat/completions", p.serve, extra),
    ]


def _bias(model: Path) -> dict[str, int]:
    """-100 on every whitespace token and +100 on end-of-sequence, which the grammar allows only where the answer
    may end: random weights at temperature 0 otherwise pad the JSON with whitespace or, with ``required``, add
    call after call, up to max_tokens. So each answer is one short call (or one compact object), on both sides."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    bias = {str(i): -100 for i in range(len(tok)) if (t := tok.decode([i])) and not t.strip()}
    bias[str(tok.eos_token_id)] = 100
    return bias


def run(run: Run) -> Section:
    sec = Section("vllm_openai", "13. Tool calls and json_schema through /openai vs vLLM's own server")
    rounds, clients, per_client = (2, 2, 2) if run.quick else (ROUNDS, CONCURRENCY, PER_CLIENT)
    sec.params = {
        "concurrency": clients,
        "requests_per_client": per_client,
        "rounds": rounds,
        "stream": False,
        "max_tokens": 200,
        "temperature": 0,
        "tool_call_parser": "hermes",
        "structured_outputs_config": STRUCTURED,
        "logit_bias": "-100 on each whitespace token, +100 on end-of-sequence",
        "engine": "tiny Llama, float32, enforce_eager, max_model_len 2048, VLLM_CPU_KVCACHE_SPACE=1",
    }
    if run.quick:
        sec.notes.append("--quick: a fake engine stands in for vLLM on both sides; the figures mean nothing.")
    work = run.dir("vllm_openai")
    t0 = time.monotonic()
    sides = _start(run, work)
    run.log(f"vllm_openai: servers ready in {time.monotonic() - t0:.0f} s")
    try:
        for side in sides:  # warm-up: the grammars are compiled once per schema, then cached
            for kind in KINDS:
                asyncio.run(_wave(side, kind, 2, 1))
        for r in range(rounds):
            for kind in KINDS:
                for side in sides if r % 2 == 0 else sides[::-1]:
                    time.sleep(0.3)  # the other engine's threads settle
                    side.proc.check()
                    w = asyncio.run(_wave(side, kind, clients, per_client))
                    side.waves.setdefault(kind, []).append(w)
                    run.log(
                        f"vllm_openai {side.key} {kind}: {w.rps:.2f} req/s, {w.cpu_all / w.requests * 1000:.0f} "
                        f"ms CPU/req ({w.cpu_front / w.requests * 1000:.0f} front end), {w.tokens} tokens, "
                        f"{w.unfit} unfit"
                    )
    finally:
        stop_all(list({id(s.proc): s.proc for s in sides}.values()), 15)
    _figures(sec, sides)
    sec.plot = _plot(run, sec, sides)
    return sec


def _figures(sec: Section, sides: list[_Side]) -> None:
    a, b = sides
    for kind in KINDS:
        for side in sides:
            ws = side.waves[kind]
            sec.figure(f"{side.label}, {kind}: requests/s", "req/s").values = [w.rps for w in ws]
            sec.figure(f"{side.label}, {kind}: CPU per request, all processes", "ms").values = [
                w.cpu_all / w.requests * 1000 for w in ws
            ]
            sec.figure(f"{side.label}, {kind}: CPU per request, front end", "ms").values = [
                w.cpu_front / w.requests * 1000 for w in ws
            ]
        for s in sides:
            unfit, total = sum(w.unfit for w in s.waves[kind]), sum(w.requests for w in s.waves[kind])
            if unfit:
                sec.notes.append(f"{s.label}, {kind}: {unfit} of {total} answers lacked the call or JSON asked for.")
        tokens = {s.label: sorted({w.tokens for w in s.waves[kind]}) for s in sides}
        if tokens[a.label] != tokens[b.label]:
            sec.notes.append(f"{kind}: the two sides generated different token counts per wave: {tokens}.")
        t = Target(f"(b) / (a) requests/s, {kind}", sec.figure(f"ratio (b)/(a) requests/s, {kind}", "x"), 0.95)
        t.ratio.values = ratios([w.rps for w in b.waves[kind]], [w.rps for w in a.waves[kind]])
        sec.targets.append(t)


def _plot(run: Run, sec: Section, sides: list[_Side]) -> str | None:
    from .report import bar_plot

    kinds = list(KINDS)
    rps = {s.label: [sec.figure(f"{s.label}, {k}: requests/s", "req/s") for k in kinds] for s in sides}
    cpu = {s.label: [sec.figure(f"{s.label}, {k}: CPU per request, all processes", "ms") for k in kinds] for s in sides}
    return bar_plot(run, "vllm_openai", sec.title, [("requests/s", kinds, rps), ("CPU ms per request", kinds, cpu)])
