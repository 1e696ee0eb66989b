"""serve --reload with real file edits: the worker restarts on new code, the queue and finished records survive,
a job in flight is handed back (not counted in retried) and runs again on the new code, a syntax error is logged
while serve keeps answering, and the next good save loads."""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
from pathlib import Path

import pytest

from handler_sdk.errors import ConfigError
from handler_sdk.loader import load_handler
from handler_sdk.models import JobStatus
from handler_sdk.serve.reload import Reloader, watch_root, watched_paths
from tests.conftest import free_port, until, wait_for_line

VERSION = """
import asyncio
import os

from handler_sdk import handler


@handler
async def work(job):
    gate = job.input.get("gate")
    while gate and not os.path.exists(gate):
        await asyncio.sleep(0.01)
    return {{"version": {version}}}
"""


def write(path: Path, version: int | str) -> None:
    path.write_text(textwrap.dedent(VERSION.format(version=version)))


async def reloaded_to(ep, path: Path, version: int, reloader: Reloader | None = None) -> None:
    """Save version ``version`` until the endpoint serves it (the watcher may not be watching yet at first)."""

    async def serving() -> bool:
        if reloader is None or reloader.reloads == 0:
            write(path, version)  # the same content again is another change event, and harmless
        reply = await ep.client.runsync({}, wait_s=5)
        return reply.output == {"version": version}

    await until(serving, timeout=30)


@pytest.fixture
def handler_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(sys, "dont_write_bytecode", sys.dont_write_bytecode)  # a Reloader sets it; put it back
    d = tmp_path / "proj"
    d.mkdir()
    path = d / "reload_me.py"
    write(path, 1)
    return path


async def test_a_saved_edit_restarts_the_worker_and_in_flight_and_queued_jobs_run_on_the_new_code(
    endpoint_factory, handler_file, tmp_path
):
    ep = await endpoint_factory(load_handler(str(handler_file)))
    reloader = Reloader(ep.server, str(handler_file))
    watching = asyncio.create_task(reloader.run())
    try:
        finished = await ep.client.runsync({})
        assert finished.output == {"version": 1}
        gate = tmp_path / "never"
        in_flight = await ep.client.run({"gate": str(gate)})
        await ep.wait_status(in_flight.id, "IN_PROGRESS")
        queued = await ep.client.run({})  # concurrency 1: it waits behind the blocked job
        assert (await ep.client.status(queued.id)).status is JobStatus.IN_QUEUE

        old = ep.server.worker
        write(handler_file, 2)

        async def rerunning() -> bool:  # handed back, and taken again by the worker on the new code
            w = ep.server.worker
            return w is not old and w is not None and in_flight.id in w.running

        await until(rerunning, timeout=30)
        assert reloader.reloads == 1
        gate.touch()
        done = await ep.client.wait(in_flight.id, timeout=10)
        assert done.status is JobStatus.COMPLETED and done.output == {"version": 2}
        assert (await ep.client.wait(queued.id, timeout=10)).output == {"version": 2}
        assert (await ep.client.status(finished.id)).output == {"version": 1}  # finished records survive
        health = await ep.client.health()
        assert health.jobs.retried == 0 and health.jobs.completed == 3
    finally:
        watching.cancel()


async def test_a_syntax_error_is_logged_serve_keeps_answering_and_the_next_good_save_loads(
    endpoint_factory, handler_file, caplog
):
    caplog.set_level(logging.INFO, logger="handler_sdk.serve.reload")
    ep = await endpoint_factory(load_handler(str(handler_file)))
    reloader = Reloader(ep.server, str(handler_file))
    watching = asyncio.create_task(reloader.run())
    try:
        await reloaded_to(ep, handler_file, 2, reloader)
        handler_file.write_text("from handler_sdk import handler\n\n@handler\ndef work(job)\n    return 3\n")

        async def logged() -> bool:
            return "does not load" in caplog.text

        await until(logged, timeout=30)
        assert f"SyntaxError in {handler_file}, line 4" in caplog.text
        assert "still serving the previous code" in caplog.text
        assert (await ep.client.runsync({})).output == {"version": 2}
        assert (await ep.client.health()).workers.idle == 1
        write(handler_file, 4)

        async def v4() -> bool:
            return (await ep.client.runsync({})).output == {"version": 4}

        await until(v4, timeout=30)
    finally:
        watching.cancel()


def test_watch_root_is_the_files_folder_or_its_top_package(tmp_path: Path):
    assert watch_root(str(tmp_path / "h.py")) == tmp_path.resolve()
    pkg = tmp_path / "top" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "top" / "__init__.py").touch()
    (pkg / "__init__.py").touch()
    assert watch_root(f"{pkg / 'h.py'}:fn") == (tmp_path / "top").resolve()
    assert watch_root("tests.handlers.kinds") == (Path(__file__).parent).resolve()
    with pytest.raises(ConfigError, match="cannot find"):
        watch_root("no_such_package_here.mod")


def test_serve_reload_from_the_command_line(handler_file, process_factory, tmp_path):
    """The flag end to end: a real serve process, a real save, the new code answering."""
    import urllib.request

    port = free_port()
    p = process_factory(
        "-m", "handler_sdk.serve", str(handler_file), "--reload", "--port", str(port),
        "--data-dir", str(tmp_path / "data"), name="serve",
    )  # fmt: skip
    wait_for_line(p, "endpoint ready")
    wait_for_line(p, "--reload: watching")

    def runsync() -> object:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/local/runsync", data=b'{"input": {}}')
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    assert b'"version":1' in runsync()
    for _ in range(60):  # until the watcher has seen a save
        write(handler_file, 5)
        try:
            wait_for_line(p, "now serving", timeout=1)
            break
        except AssertionError:
            continue
    assert b'"version":5' in runsync()


def test_reload_without_a_target_is_refused(process_factory):
    p = process_factory("-m", "handler_sdk.serve", "--reload", "--port", "0", name="serve")
    assert p.proc.wait(30) == 2
    assert "--reload needs a TARGET" in p.output()


async def test_a_change_to_a_module_beside_the_handler_reloads_it_too(endpoint_factory, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", sys.dont_write_bytecode)
    d = tmp_path / "withhelper"
    d.mkdir()
    (d / "reload_helper.py").write_text("VALUE = 'first'\n")
    target = d / "uses_helper.py"
    target.write_text(
        "from reload_helper import VALUE\nfrom handler_sdk import handler\n\n\n"
        "@handler\ndef h(job):\n    return {'value': VALUE}\n"
    )
    ep = await endpoint_factory(load_handler(str(target)))
    reloader = Reloader(ep.server, str(target))
    watching = asyncio.create_task(reloader.run())
    try:
        assert (await ep.client.runsync({})).output == {"value": "first"}

        async def second() -> bool:
            (d / "reload_helper.py").write_text("VALUE = 'second, longer'\n")
            return (await ep.client.runsync({})).output == {"value": "second, longer"}

        await until(second, timeout=30)
    finally:
        watching.cancel()


def test_only_the_folders_modules_were_loaded_from_are_watched(tmp_path: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "wpkg").mkdir()
    (tmp_path / "wpkg" / "__init__.py").touch()
    (tmp_path / "wpkg" / "used.py").write_text("X = 1\n")
    (tmp_path / ".venv" / "lib").mkdir(parents=True)  # never imported from: not watched
    target = tmp_path / "main_watch.py"
    target.write_text("import wpkg.used\nfrom handler_sdk import handler\n\n\n@handler\ndef h(job):\n    return 1\n")
    load_handler(str(target))
    try:
        assert watched_paths(tmp_path.resolve()) == {tmp_path.resolve(), (tmp_path / "wpkg").resolve()}
    finally:
        for name in ("wpkg", "wpkg.used", "main_watch"):
            sys.modules.pop(name, None)
    assert watched_paths(target.resolve()) == {target.resolve()}
