"""Resolve a TARGET (``path/to/file.py``, ``package.module``, either with ``:function``) to a Handler."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from .errors import ConfigError
from .handler import Handler, handler

__all__ = ["load_handler"]


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ConfigError(f"handler file {path} does not exist")
    # Siblings of the handler file import as they would when the file runs as a script.
    sys.path.insert(0, str(path.parent.resolve()))
    name = path.stem if path.stem not in sys.modules else f"_handler_sdk_target_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    return module


def _import(target: str) -> ModuleType:
    if target.endswith(".py") or "/" in target or "\\" in target:
        return _import_file(Path(target))
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        raise ConfigError(f"cannot import {target!r}: {e}") from e
    except Exception as e:
        raise ConfigError(f"importing {target!r} failed: {type(e).__name__}: {e}") from e


def load_handler(target: str) -> Handler:
    """Load the handler named by ``target``.

    Without ``:function`` the module must hold exactly one ``@handler`` (or, runpod-style, a plain function named
    ``handler``); several are an error that lists them.
    """
    module_part, _, attr = target.partition(":")
    module = _import(module_part)
    if attr:
        obj = getattr(module, attr, None)
        if obj is None:
            raise ConfigError(f"{module_part} has no attribute {attr!r}")
        if isinstance(obj, Handler):
            return obj
        if callable(obj):
            return handler(obj)
        raise ConfigError(f"{target} is not a function")
    found = {name: obj for name, obj in vars(module).items() if isinstance(obj, Handler)}
    if len(found) == 1:
        return next(iter(found.values()))
    if len(found) > 1:
        names = ", ".join(sorted(found))
        raise ConfigError(
            f"{module_part} defines several handlers ({names}); name one, e.g. {module_part}:{min(found)}"
        )
    plain = getattr(module, "handler", None)
    if callable(plain) and plain is not handler:  # not our decorator, imported by name
        return handler(plain)
    raise ConfigError(f"{module_part} defines no @handler function (and no function named 'handler')")
