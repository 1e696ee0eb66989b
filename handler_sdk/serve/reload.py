"""``serve --reload``: when the handler's file (or its package) changes, the in-process worker restarts on the new
code.

The endpoint itself never restarts: the broker keeps the queue and the finished records, so nothing a client
holds goes stale. A job in flight is handed back to the queue (a hand-back, not counted in /health ``retried``)
and runs again on the new code. New code that does not import (a syntax error, a bad import) is logged with the
file and line, and the previous code keeps serving until the next good save.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..loader import load_handler
from .server import Server

__all__ = ["Reloader", "start_reloader", "watch_root", "watched_paths"]

log = logging.getLogger(__name__)


def watch_root(target: str) -> Path:
    """What to watch for a TARGET: a file's folder, or the top package above it; a module's package (or file)."""
    module = target.partition(":")[0]
    if module.endswith(".py") or "/" in module or "\\" in module:
        root = Path(module).resolve().parent
        while (root / "__init__.py").is_file() and (root.parent / "__init__.py").is_file():
            root = root.parent
        return root
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError) as e:
        raise ConfigError(f"--reload cannot find {module!r}: {e}") from e
    if spec is None:
        raise ConfigError(f"--reload cannot find {module!r}")
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    if spec.origin is None:
        raise ConfigError(f"--reload cannot watch {module!r}: it has no file")
    return Path(spec.origin).resolve()


def _forget_modules_under(root: Path) -> None:
    """Drop the modules loaded from ``root`` so the next import reads the files again (never our own)."""
    for name, mod in list(sys.modules.items()):
        file = getattr(mod, "__file__", None)
        if not file or name == "handler_sdk" or name.startswith("handler_sdk."):
            continue
        path = Path(file).resolve()
        if path == root or root in path.parents:
            del sys.modules[name]
    importlib.invalidate_caches()


def watched_paths(root: Path) -> set[Path]:
    """The folders to watch: ``root`` and the folders under it that loaded modules came from, each watched without
    its subfolders, so a project folder's ``.venv`` or data (thousands of folders) costs no inotify watches.
    (A module imported from a new folder is watched from the next reload on.)"""
    if root.is_file():
        return {root}
    paths = {root}
    for mod in list(sys.modules.values()):
        file = getattr(mod, "__file__", None)
        if file:
            folder = Path(file).resolve().parent
            if folder == root or root in folder.parents:
                paths.add(folder)
    return paths


def _describe(e: BaseException) -> str:
    cause = e.__cause__
    if isinstance(cause, SyntaxError):
        where = f"{cause.filename}, line {cause.lineno}"
        text = (cause.text or "").strip()
        return f"SyntaxError in {where}: {cause.msg}" + (f"\n    {text}" if text else "")
    return str(e)


class Reloader:
    """Watches the target's files and swaps the server's handler when they change."""

    def __init__(self, server: Server, target: str, *, debounce_ms: int = 150) -> None:
        self.server = server
        self.target = target
        self.root = watch_root(target)
        self.debounce_ms = debounce_ms
        self.reloads = 0
        if importlib.util.find_spec("watchfiles") is None:
            raise ConfigError("serve --reload needs watchfiles: pip install 'handler-sdk[reload]'")
        # A .pyc written by one save could be taken for the next one's when both land in the same second with the
        # same size; with none written, every reload compiles what is on disk.
        sys.dont_write_bytecode = True

    async def run(self) -> None:
        from watchfiles import PythonFilter, awatch

        log.info("--reload: watching %s", self.root)
        while True:
            paths = watched_paths(self.root)
            async for changes in awatch(
                *paths, watch_filter=PythonFilter(), debounce=self.debounce_ms, step=50, recursive=False
            ):
                self.reload(changes)
                if watched_paths(self.root) != paths:
                    break  # the new code imports from another folder: watch that one too

    def reload(self, changes: Any = ()) -> bool:
        """Load the target afresh; on success the worker restarts on it. False (logged) when it does not load."""
        names = sorted({Path(p).name for _, p in changes})
        log.info("--reload: %s changed; loading %s", ", ".join(names) or "files", self.target)
        _forget_modules_under(self.root)
        try:
            h = load_handler(self.target)
        except Exception as e:  # ConfigError wraps what the import raised; anything else is as bad here
            log.error("--reload: the new code does not load, still serving the previous code: %s", _describe(e))
            return False
        handed_back = self.server.swap_handler(h)
        self.reloads += 1
        log.info("--reload: now serving %s (%d job(s) in flight handed back to run again)", h.name, handed_back)
        return True


def start_reloader(server: Server, target: str) -> asyncio.Task[None]:
    """Run a Reloader for ``server`` as a task (serve's ``--reload``)."""
    return asyncio.create_task(Reloader(server, target).run(), name="reload")
