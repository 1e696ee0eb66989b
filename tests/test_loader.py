"""load_handler: every TARGET form, and a clear ConfigError for each way a target can be wrong."""

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from handler_sdk import ConfigError, Handler, HandlerKind, Job
from handler_sdk.loader import load_handler

HANDLERS = Path(__file__).resolve().parent / "handlers"


@pytest.fixture(autouse=True)
def isolated_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The loader adds the handler's folder to sys.path and registers the module: undo both after each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


ONE = """
    from handler_sdk import handler

    @handler(concurrency=3)
    def only(job):
        return job.input
"""

TWO = """
    from handler_sdk import handler

    @handler
    def zeta(job):
        return 1

    @handler
    async def alpha(job):
        return 2

    def helper(job):
        return 3

    NOT_CALLABLE = 42
"""


# --- the target forms ------------------------------------------------------------------------------------------


def test_file_path_with_one_handler_loads_it(tmp_path: Path) -> None:
    h = load_handler(str(write(tmp_path / "one.py", ONE)))
    assert isinstance(h, Handler) and h.name == "only" and h.concurrency == 3


def test_relative_file_path_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "sub" / "rel_one.py", ONE)
    monkeypatch.chdir(tmp_path)
    assert load_handler("sub/rel_one.py").name == "only"


def test_file_path_with_function_picks_that_handler(tmp_path: Path) -> None:
    f = write(tmp_path / "two.py", TWO)
    assert load_handler(f"{f}:alpha").kind is HandlerKind.ASYNC
    assert load_handler(f"{f}:zeta").name == "zeta"


def test_file_path_with_a_plain_function_wraps_it_as_a_handler(tmp_path: Path) -> None:
    h = load_handler(f"{write(tmp_path / 'two.py', TWO)}:helper")
    assert isinstance(h, Handler) and h.name == "helper" and h.concurrency == 1
    assert h({"x": 1}) == 3


def test_package_module_loads_its_one_handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "unitpkg_loader" / "__init__.py", "")
    write(tmp_path / "unitpkg_loader" / "serving.py", ONE)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_handler("unitpkg_loader.serving").name == "only"


def test_module_with_function_picks_that_handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "unitmod_two.py", TWO)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_handler("unitmod_two:alpha").name == "alpha"


def test_fixture_handler_file_selects_a_function_of_one_kind() -> None:
    assert load_handler(f"{HANDLERS / 'kinds.py'}:sync_gen").kind is HandlerKind.SYNC_GEN


def test_runpod_style_module_with_a_plain_handler_function_loads_it() -> None:
    h = load_handler(str(HANDLERS / "runpod_style.py"))
    assert h.name == "handler" and h.kind is HandlerKind.SYNC
    assert h({"id": "j", "input": {"a": 1}}) == {"echo": {"a": 1}, "id_seen": "j"}


def test_handler_file_can_import_its_sibling_modules(tmp_path: Path) -> None:
    write(tmp_path / "unit_helpers_sib.py", "GREETING = 'hello'\n")
    f = write(
        tmp_path / "uses_sibling.py",
        """
        from unit_helpers_sib import GREETING
        from handler_sdk import handler

        @handler
        def greet(job):
            return GREETING
        """,
    )
    assert load_handler(str(f))({}) == "hello"


def test_loading_the_same_file_twice_gives_a_working_handler_each_time(tmp_path: Path) -> None:
    f = str(write(tmp_path / "twice.py", ONE))
    first, second = load_handler(f), load_handler(f)
    assert first.name == second.name == "only"
    assert second(Job({"id": "j", "input": 7})) == 7
    assert first is not second


# --- errors ----------------------------------------------------------------------------------------------------


def test_several_handlers_without_a_function_named_fail_listing_them_all(tmp_path: Path) -> None:
    f = write(tmp_path / "two.py", TWO)
    with pytest.raises(ConfigError) as e:
        load_handler(str(f))
    msg = str(e.value)
    assert "several handlers (alpha, zeta)" in msg
    assert f"{f}:alpha" in msg, "the message shows how to name one"
    assert "helper" not in msg, "plain functions are not handlers"


def test_fixture_module_with_many_handlers_lists_every_one() -> None:
    with pytest.raises(
        ConfigError, match=r"several handlers \(async_echo, async_gen, sync_echo, sync_gen, sync_sleep\)"
    ):
        load_handler(str(HANDLERS / "kinds.py"))


def test_missing_file_fails_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "nope.py"
    with pytest.raises(ConfigError, match=f"handler file {missing} does not exist"):
        load_handler(str(missing))


def test_missing_file_with_function_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_handler(f"{tmp_path / 'nope.py'}:fn")


def test_file_whose_import_raises_fails_with_the_original_error(tmp_path: Path) -> None:
    f = write(tmp_path / "broken.py", "import os\nraise RuntimeError('no GPU here')\n")
    with pytest.raises(ConfigError, match=r"importing .*broken\.py failed: RuntimeError: no GPU here") as e:
        load_handler(str(f))
    assert isinstance(e.value.__cause__, RuntimeError)


def test_file_with_a_syntax_error_fails_as_an_import_error(tmp_path: Path) -> None:
    f = write(tmp_path / "syntax.py", "def broken(:\n")
    with pytest.raises(ConfigError, match=r"importing .*syntax\.py failed: SyntaxError"):
        load_handler(str(f))


def test_file_importing_a_missing_package_names_it(tmp_path: Path) -> None:
    f = write(tmp_path / "needs.py", "import unit_no_such_package_xyz\n")
    with pytest.raises(ConfigError, match="ModuleNotFoundError: No module named 'unit_no_such_package_xyz'"):
        load_handler(str(f))


def test_unknown_module_fails_clearly() -> None:
    with pytest.raises(ConfigError, match="cannot import 'unit_no_such_module_xyz'"):
        load_handler("unit_no_such_module_xyz")


def test_module_whose_import_raises_fails_with_the_original_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "unitmod_raises.py", "raise ValueError('bad config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="importing 'unitmod_raises' failed: ValueError: bad config"):
        load_handler("unitmod_raises")


def test_function_name_not_in_the_module_fails_clearly(tmp_path: Path) -> None:
    f = write(tmp_path / "two.py", TWO)
    with pytest.raises(ConfigError, match="has no attribute 'gamma'"):
        load_handler(f"{f}:gamma")


def test_function_name_that_is_not_callable_fails_clearly(tmp_path: Path) -> None:
    f = write(tmp_path / "two.py", TWO)
    with pytest.raises(ConfigError, match="is not a function"):
        load_handler(f"{f}:NOT_CALLABLE")


def test_module_without_any_handler_fails_clearly(tmp_path: Path) -> None:
    f = write(tmp_path / "empty.py", "def helper(job):\n    return 1\n")
    with pytest.raises(ConfigError, match="defines no @handler function"):
        load_handler(str(f))


def test_module_that_only_imports_the_decorator_has_no_handler(tmp_path: Path) -> None:
    f = write(tmp_path / "imports_only.py", "from handler_sdk import handler\n")
    with pytest.raises(ConfigError, match="defines no @handler function"):
        load_handler(str(f))
