"""The images without a Docker daemon: both Dockerfiles parsed (base, what they copy, the user they run as), and
their install steps run for real in a fresh venv (the CUDA wheel excepted), whose handler_sdk then runs a job."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT


@dataclass
class Step:
    op: str
    args: str


def parse(path: Path) -> list[Step]:
    """Instructions with continuations joined and comments dropped; ``${ARG}`` replaced by ARG defaults."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    steps, args = [], {}
    for line in filter(None, (ln.strip() for ln in text.splitlines())):
        op, _, rest = line.partition(" ")
        for name, value in args.items():
            rest = rest.replace(f"${{{name}}}", value)
        if op.upper() == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value.strip('"')
        steps.append(Step(op.upper(), rest.strip()))
    return steps


def ignored(rel: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip()]
    return any(fnmatch.fnmatch(part, p) for p in patterns for part in Path(rel).parts)


def pip_installs(steps: list[Step]) -> list[list[str]]:
    out = []
    for s in steps:
        if s.op == "RUN":
            for cmd in s.args.split("&&"):
                words = shlex.split(cmd)
                if words[:2] == ["pip", "install"]:
                    out.append(words[2:])
    return out


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_each_dockerfile_copies_what_exists_and_ends_with_a_worker_command(name):
    steps = parse(ROOT / name)
    assert steps[0].op in ("ARG", "FROM") and any(s.op == "FROM" for s in steps)
    for s in steps:
        if s.op == "COPY":
            *sources, _ = shlex.split(s.args)
            for src in sources:
                assert (ROOT / src).exists(), f"{name} copies {src}, which is not in the repository"
                assert not ignored(src), f"{name} copies {src}, which .dockerignore leaves out"
    cmd = json.loads(next(s for s in reversed(steps) if s.op == "CMD").args)
    assert cmd[:3] == ["python", "-m", "handler_sdk.worker"]


def test_the_cpu_image_is_slim_python_without_vllm_and_runs_as_a_non_root_user():
    steps = parse(ROOT / "Dockerfile")
    base = next(s.args for s in steps if s.op == "FROM")
    assert re.fullmatch(r"python:3\.1[1-9]-slim", base), base
    assert not any("vllm" in " ".join(a) for a in pip_installs(steps))
    users = [s.args for s in steps if s.op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert [s.op for s in steps].index("USER") < [s.op for s in steps].index("CMD")
    useradd = next(s.args for s in steps if s.op == "RUN" and "useradd" in s.args)
    assert users[-1] in shlex.split(useradd)


def test_the_install_steps_of_both_images_work_in_a_fresh_venv(tmp_path: Path):
    """The same pip commands from a copy of the build context, then the installed package (not this checkout)
    runs the CPU image's handler as a one-shot job."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for rel in ("pyproject.toml", "README.md", "handler_sdk"):
        src = ROOT / rel
        (shutil.copytree(src, ctx / rel, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy(src, ctx / rel))  # fmt: skip
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}  # nothing of this checkout
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    py = venv / "bin" / "python"
    cpu, gpu = pip_installs(parse(ROOT / "Dockerfile")), pip_installs(parse(ROOT / "Dockerfile.gpu"))
    gpu = [a for a in gpu if not any(w.startswith("vllm") for w in a)]  # the CUDA wheel: not on a CPU machine
    assert cpu and gpu
    for args in [*gpu, *cpu]:
        run = subprocess.run(
            [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args],
            check=False, cwd=ctx, capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
    handler = next(s.args for s in parse(ROOT / "Dockerfile") if s.op == "COPY" and "/app/handler" in s.args)
    src = shlex.split(handler)[0]
    out = subprocess.run(
        [str(py), "-m", "handler_sdk.serve", str(ROOT / src), "--test-input", '{"input": {"hi": 1}}'],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["output"] == {"hi": 1}
    where = subprocess.run([str(py), "-c", "import handler_sdk, uvloop; print(handler_sdk.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True, env=env)  # fmt: skip
    assert str(venv) in where.stdout  # the installed copy, not this checkout
