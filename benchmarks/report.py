"""RESULTS.md, results.json and the plots.

``results.json`` keeps every benchmark's latest section, so running one benchmark (``python -m benchmarks NAME``)
replaces its own section and keeps the others; RESULTS.md is rendered from it each time. Every section carries
its own date and machine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import BENCH_DIR, Figure, Run, Section, fmt

__all__ = ["Panel", "bar_plot", "render", "save"]

ORDER = [
    "runsync",
    "drain",
    "streaming",
    "chunker",
    "footprint",
    "batching",
    "engine_death",
    "vllm_runsync",
    "stream_cpu",
    "retention",
    "soak",
    "redis_state",
    "vllm_openai",
    "journal",
]

Panel = tuple[str, list[str], dict[str, list[Figure | None]]]  # y label, group names, series -> one figure per group

_INTRO = """\
# Benchmark results

Written by `python -m benchmarks` (all benchmarks; `python -m benchmarks NAME` re-runs one and keeps the other
sections). Do not edit by hand: the numbers come from `benchmarks/results.json`.

**How to read it.** The machines these run on are shared and noisy, so absolute numbers move from run to run.
Every comparison is therefore a *ratio* against a yardstick measured in the same run, in alternating rounds:
each figure is the **median of the repeats, with [min, max]**, and each ratio is taken per round, then its median
[min, max] is reported. A target is PASS when the median meets it. Only the footprint's start-up time and memory
targets are absolute.

**Rate limits are off** (`--no-rate-limits`) for every serve process here: the SEED.md limits would cap /runsync
at 200 requests/s (2,000 per 10 s), which would measure the limiter, not the dispatch path.
"""


def _machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m.get('cores')} cores, {m.get('memory_gib')} GiB memory, {m.get('cpu')}, Python {m.get('python')}, "
        f"{m.get('os')}; load average at the end {m.get('load_avg')}"
    )


def _fig(f: dict[str, Any]) -> str:
    if not f["values"]:
        return "n/a"
    if len(f["values"]) == 1:
        return fmt(f["median"])
    return f"{fmt(f['median'])} [{fmt(f['min'])}, {fmt(f['max'])}]"


def _target_row(name: str, t: dict[str, Any]) -> str:
    op = {">=": "≥", "<=": "≤"}.get(t["op"], t["op"])
    verdict = "**PASS**" if t["passed"] else "**MISS**"
    return f"| {name} | {t['label']} {op} {fmt(t['bound'])} | {_fig(t['ratio'])} | {verdict} |"


def _section_md(s: dict[str, Any]) -> list[str]:
    out = [f"## {s['title']}", ""]
    out.append(f"Run {s['date']} in {s['seconds']} s on {_machine_line(s['machine'])}.")
    out.append("")
    if not s["available"]:
        out += [f"> Not available: {n}" for n in s["notes"]] + [""]
        return out
    if s["params"]:
        out.append("Parameters: " + "; ".join(f"{k} = `{v}`" for k, v in s["params"].items()) + ".")
        out.append("")
    out += ["| figure | median [min, max] | unit |", "|---|---|---|"]
    out += [f"| {f['name']} | {_fig(f)} | {f['unit']} |" for f in s["figures"]]
    out.append("")
    if s["targets"]:
        out += ["| benchmark | target | measured | result |", "|---|---|---|---|"]
        out += [_target_row(s["name"], t) for t in s["targets"]]
        out.append("")
    for n in s["notes"]:
        out.append(f"- {n}")
    if s["notes"]:
        out.append("")
    for block in s.get("text", []):
        out += [block, ""]
    if s.get("profile"):
        out += [s["profile"], ""]
    if s.get("plot"):
        out += [f"![{s['title']}]({s['plot']})", ""]
    return out


_ASYNCIO = " [asyncio]"


def _before_after(sections: dict[str, dict[str, Any]], before: dict[str, Any]) -> list[str]:
    """Each target's ratio in ``before`` (an earlier results.json, kept in benchmarks/before/) and now."""
    rows = []
    for name, s in sections.items():
        old = {t["label"]: t for t in before.get("sections", {}).get(name, {}).get("targets", [])}
        for t in s["targets"]:
            # Runs from before the loop was a choice ran on asyncio's, and their labels name no loop.
            was = old.get(t["label"]) or old.get(t["label"].removesuffix(_ASYNCIO))
            if was is not None:
                rows.append(
                    f"| {name} | {t['label']} | {_fig(was['ratio'])} ({'PASS' if was['passed'] else 'MISS'}) "
                    f"| {_fig(t['ratio'])} ({'PASS' if t['passed'] else 'MISS'}) |"
                )
    if not rows:
        return []
    head = ["## Before and after", "", f"Before: {before.get('about', 'an earlier run')} After: the figures above.", ""]
    return [*head, "| benchmark | target ratio | before | after |", "|---|---|---|---|", *rows, ""]


def render(sections: dict[str, dict[str, Any]], before: dict[str, Any] | None = None) -> str:
    names = [n for n in ORDER if n in sections] + [n for n in sections if n not in ORDER]
    lines = [_INTRO]
    latest = max((sections[n] for n in names), key=lambda s: s["date"], default=None)
    if latest is not None:
        lines += ["## Machine", "", f"Latest run {latest['date']}: {_machine_line(latest['machine'])}.", ""]
    lines += ["## Summary", "", "| benchmark | target | measured | result |", "|---|---|---|---|"]
    for n in names:
        s = sections[n]
        if not s["available"]:
            lines.append(f"| {n} | — | not available | **NOT RUN** |")
        for t in s["targets"]:
            lines.append(_target_row(n, t))
    lines.append("")
    if before is not None:
        lines += _before_after({n: sections[n] for n in names}, before)
    for n in names:
        lines += _section_md(sections[n])
    return "\n".join(lines).rstrip() + "\n"


def save(run: Run, new: Sequence[Section]) -> Path:
    """Merge ``new`` into results.json under ``run.out`` and rewrite RESULTS.md; returns its path."""
    run.out.mkdir(parents=True, exist_ok=True)
    data_path = run.out / "results.json"
    sections: dict[str, dict[str, Any]] = {}
    if data_path.exists():
        try:
            sections = json.loads(data_path.read_text())["sections"]
        except (ValueError, KeyError):
            sections = {}
    for s in new:
        sections[s.name] = s.as_dict()
    data_path.write_text(json.dumps({"sections": sections}, indent=1, allow_nan=True) + "\n")
    md = run.out / "RESULTS.md"
    before_path = BENCH_DIR / "before" / "results.json"
    before = json.loads(before_path.read_text()) if before_path.exists() and not run.quick else None
    md.write_text(render(sections, before))
    return md


def bar_plot(run: Run, name: str, title: str, panels: Sequence[Panel]) -> str | None:
    """Grouped bars (median) with min-to-max whiskers, one panel per y quantity; returns the PNG's relative path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, (ylabel, groups, series) in zip(axes[0], panels, strict=True):
        n = max(len(series), 1)
        width = 0.8 / n
        for i, (label, figs) in enumerate(series.items()):
            xs, meds, lo, hi = [], [], [], []
            for g, f in enumerate(figs):
                if f is None or not f.values:
                    continue
                xs.append(g - 0.4 + width * (i + 0.5))
                meds.append(f.median)
                lo.append(f.median - f.lo)
                hi.append(f.hi - f.median)
            if xs:
                ax.bar(xs, meds, width, label=label, yerr=[lo, hi], capsize=3)
                for x, m in zip(xs, meds, strict=True):
                    ax.annotate(
                        fmt(m), (x, m), ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points"
                    )
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    plots = run.out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    path = plots / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plots/{name}.png"
