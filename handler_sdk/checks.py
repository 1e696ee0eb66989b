"""Start-up checks: ``@handler(checks=[free_disk(20), gpu_memory(16), model_file("/models/m.safetensors")])``.

A check is any function (sync or async) taking no arguments. It runs once, before the setup hook and before the
first job, while /health counts the worker as initializing. It fails by raising (or by returning ``False``);
the worker then exits 1 with the check's message and takes no job, as it does when the setup hook fails. The
ready-made checks below say what they found and what they needed.
"""

from __future__ import annotations

import inspect
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import SetupError
from .threads import ElasticPool

__all__ = ["Check", "CheckFailed", "free_disk", "gpu_memory", "model_file", "run_checks"]

log = logging.getLogger(__name__)

Check = Callable[[], Any]
GB = 1_000_000_000


class CheckFailed(SetupError):
    """A start-up check found the machine unfit; the message says what it found and what it needed."""


class _Named:
    """A ready-made check with a readable name, so the failure log says which check and with what limits."""

    def __init__(self, name: str, fn: Callable[[], None]) -> None:
        self.name = name
        self.__qualname__ = name
        self._fn = fn

    def __call__(self) -> None:
        self._fn()

    def __repr__(self) -> str:
        return self.name


def _name(check: Check) -> str:
    if isinstance(check, _Named):
        return check.name
    return getattr(check, "__qualname__", repr(check))


async def run_checks(checks: Sequence[Check], pool: ElasticPool) -> None:
    """Run each check in order (sync ones in a thread); raises SetupError naming the first that fails."""
    for check in checks:
        name = _name(check)
        log.info("running start-up check %s", name)
        try:
            ok = await check() if inspect.iscoroutinefunction(check) else await pool.run(check)
        except Exception as e:
            message = str(e) if isinstance(e, CheckFailed) else f"{type(e).__name__}: {e}"
            raise SetupError(f"start-up check {name} failed: {message}") from e
        if ok is False:
            raise SetupError(f"start-up check {name} failed: it returned False")


def free_disk(min_gb: float, path: str | Path = ".") -> Check:
    """At least ``min_gb`` GB (10^9 bytes) free on the filesystem holding ``path``."""

    def check() -> None:
        free = shutil.disk_usage(path).free
        if free < min_gb * GB:
            raise CheckFailed(f"{free / GB:.1f} GB free at {path}, {min_gb:g} GB needed")

    return _Named(f"free_disk(min_gb={min_gb:g}, path={str(path)!r})", check)


def model_file(path: str | Path, *, min_bytes: int = 1) -> Check:
    """``path`` exists: a file of at least ``min_bytes`` bytes, or a directory that is not empty."""
    p = Path(path)

    def check() -> None:
        if p.is_dir():
            if not any(p.iterdir()):
                raise CheckFailed(f"{p} is an empty directory")
            return
        if not p.exists():
            raise CheckFailed(f"{p} does not exist (mount or bake the model there, or fix the path)")
        size = p.stat().st_size
        if size < min_bytes:
            raise CheckFailed(f"{p} is {size} bytes, at least {min_bytes} expected (a partial download?)")

    return _Named(f"model_file({str(p)!r})", check)


def gpu_memory(min_gb: float, *, device: int = 0, required: bool = True) -> Check:
    """At least ``min_gb`` GB free on CUDA device ``device``, measured with torch.

    Without torch or without a CUDA device the check fails, unless ``required=False`` (an image that also runs on
    CPU-only machines), when it passes and logs why it measured nothing."""

    def check() -> None:
        try:
            import torch
        except ImportError:
            _absent("torch is not installed", required)
            return
        if not torch.cuda.is_available():
            _absent(f"CUDA is not available (torch {torch.__version__}, built for CUDA {torch.version.cuda})", required)
            return
        count = torch.cuda.device_count()
        if device >= count:
            raise CheckFailed(f"CUDA device {device} does not exist ({count} visible)")
        free, total = torch.cuda.mem_get_info(device)
        name = torch.cuda.get_device_name(device)
        if free < min_gb * GB:
            raise CheckFailed(
                f"{free / GB:.1f} GB free of {total / GB:.1f} GB on cuda:{device} ({name}), {min_gb:g} GB needed"
            )
        log.info("cuda:%d (%s): %.1f GB free of %.1f GB", device, name, free / GB, total / GB)

    return _Named(f"gpu_memory(min_gb={min_gb:g}, device={device})", check)


def _absent(why: str, required: bool) -> None:
    if required:
        raise CheckFailed(why)
    log.info("gpu_memory check skipped: %s", why)
