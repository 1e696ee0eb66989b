"""The public API is exactly the curated set: every public module declares __all__, and every name in it exists."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import handler_sdk

PACKAGE = Path(handler_sdk.__file__).resolve().parent
ROOT = PACKAGE.parent

EXPECTED = {
    "handler_sdk": [
        "Chunk",
        "ConfigError",
        "File",
        "FileError",
        "Final",
        "Handler",
        "HandlerError",
        "HandlerKind",
        "HandlerSDKError",
        "InfrastructureError",
        "InvalidInput",
        "Job",
        "JobFailure",
        "JobStatus",
        "SetupError",
        "TransportError",
        "UserError",
        "__version__",
        "handler",
    ],
    "handler_sdk.client": ["AsyncEndpoint", "Endpoint", "RetryPolicy"],
    "handler_sdk.serve": ["Broker", "BrokerConfig", "ServeConfig", "Server"],
    "handler_sdk.worker": ["Worker", "WorkerConfig", "WorkerState", "start"],
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# Entry points (python -m ...) are run, never imported, so they have no API to declare.
PUBLIC_FILES = sorted(p for p in PACKAGE.rglob("*.py") if p.name == "__init__.py" or not p.name.startswith("_"))
# The vLLM adapter needs the optional engine installed; its modules are checked from their source only.
IMPORTABLE = [p for p in PUBLIC_FILES if "vllm" not in p.relative_to(PACKAGE).parts]


def _declared_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, rhs = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, rhs = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            value = ast.literal_eval(rhs)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), "__all__ is a literal list"
            return value
    return None


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_package_all_is_exactly_the_curated_set(module: str) -> None:
    assert importlib.import_module(module).__all__ == EXPECTED[module]


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_every_exported_name_exists(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert missing == []


def test_star_import_gives_exactly_the_curated_names() -> None:
    namespace: dict[str, object] = {}
    exec("from handler_sdk import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(EXPECTED["handler_sdk"])


def test_handler_is_the_decorator_not_the_module_of_the_same_name() -> None:
    # handler_sdk/handler.py shares its name with the decorator; importing the submodule first must not shadow it.
    code = (
        "import handler_sdk.handler, handler_sdk, types; assert not isinstance(handler_sdk.handler, types.ModuleType)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_version_is_a_string_matching_the_project() -> None:
    assert isinstance(handler_sdk.__version__, str)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{handler_sdk.__version__}"' in pyproject


def test_importing_the_package_does_not_pull_in_the_engine_or_the_endpoint() -> None:
    code = (
        "import sys, handler_sdk; "
        "heavy = [m for m in ('vllm', 'torch', 'handler_sdk.serve', 'handler_sdk.worker') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


@pytest.mark.parametrize("path", PUBLIC_FILES, ids=_module_name)
def test_every_public_module_declares_all_with_names_it_defines(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    exported = _declared_all(tree)
    assert exported is not None, f"{_module_name(path)} has no __all__"
    assert len(exported) == len(set(exported)), "no duplicates"
    undefined = set(exported) - _top_level_names(tree)
    if path.name == "__init__.py":
        undefined -= {p.stem for p in path.parent.glob("*.py")}  # a submodule may be exported by name
    assert undefined == set(), f"{_module_name(path)}.__all__ names what it does not define: {sorted(undefined)}"


@pytest.mark.parametrize("path", IMPORTABLE, ids=_module_name)
def test_every_importable_module_exports_only_attributes_it_has(path: Path) -> None:
    mod: ModuleType = importlib.import_module(_module_name(path))
    assert [n for n in mod.__all__ if not hasattr(mod, n)] == []


def test_the_worker_package_imports_nothing_from_serve() -> None:
    """A worker runs alone in a container: worker/ may not reach up into serve/ (its in-process adapter lives
    on the serve side)."""
    root = Path(__file__).resolve().parents[1] / "handler_sdk" / "worker"
    offenders = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                if target.startswith("..serve") or target.startswith("handler_sdk.serve"):
                    offenders.append(f"{path.name}: {target}")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("handler_sdk.serve")]
    assert offenders == []
