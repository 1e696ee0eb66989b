"""Fault 5 and the start-up storage errors: a full or unwritable data dir.

A full disk used to kill the in-process worker silently (a StoreError escaped its task group), answer /run with
500 while its job was already dispatched and running, and drop the changes of every failed commit, so that after a
restart most accepted jobs were missing from the journal. Now a store error answers 503 with Retry-After, a /run
job is dispatched only once journaled, failed commits are retried until the disk takes them, and the worker goes on.

The disk fills for real where it can: a small tmpfs (root can mount one), else a file-size limit on the serve
process (RLIMIT_FSIZE), and in-process SQLite's max_page_count. None of them is ever skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from handler_sdk.loader import load_handler
from handler_sdk.models import JobStatus

from .tools import HANDLERS, ROOT, call, start_serve

ECHO = str(HANDLERS) + ":echo"
S_FAILED, S_COMPLETED = JobStatus.FAILED, JobStatus.COMPLETED
BIG_INPUT = {"blob": "x" * 200_000}  # needs new pages: a full database cannot take it


async def _set_max_pages(store, pages: int) -> None:
    def run() -> None:
        store._conn.execute(f"PRAGMA max_page_count = {pages}")

    await asyncio.get_running_loop().run_in_executor(store._exec, run)


def journaled(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        import json

        return {i: json.loads(s)["status"] for i, s in conn.execute("SELECT id, state FROM jobs")}
    finally:
        conn.close()


async def test_a_full_database_answers_503_dispatches_nothing_and_the_worker_survives(endpoint_factory, tmp_path):
    data = tmp_path / "data"
    ep = await endpoint_factory(load_handler(ECHO), data_dir=data)
    store = ep.broker.store
    status, running, _ = await call(ep.http, "POST", f"{ep.url}/run", {"input": {"sleep": 0.5}})
    assert status == 200
    await _set_max_pages(store, 1)  # no page beyond those it has: the next growth is SQLITE_FULL
    refused = 0
    for _ in range(5):
        status, body, headers = await call(ep.http, "POST", f"{ep.url}/run", {"input": BIG_INPUT}, timeout=10)
        assert status == 503, (status, body)
        assert int(headers["Retry-After"]) >= 1 and "job store" in body["error"]
        refused += 1
    assert all(r.input != BIG_INPUT for r in ep.broker.jobs.values())  # refused jobs are nowhere, never ran
    # The accepted job finishes while the disk is full: its result waits for the journal, the worker goes on.
    await ep.wait_status(running["id"], "COMPLETED", timeout=10)
    assert ep.broker.health()["workers"]["idle"] == 1
    status, sync, _ = await call(ep.http, "POST", f"{ep.url}/runsync", {"input": {"s": 1}}, timeout=10)
    assert status == 200 and sync["status"] == "COMPLETED"
    # The disk has room again: everything queued for the journal lands, and /run works.
    await _set_max_pages(store, 1_000_000)
    status, later, _ = await call(ep.http, "POST", f"{ep.url}/run", {"input": BIG_INPUT}, timeout=10)
    assert status == 200
    await ep.wait_status(later["id"], "COMPLETED")
    await ep.broker.durable()
    rows = journaled(data / "jobs.sqlite3")
    assert rows[running["id"]] == "COMPLETED" and rows[later["id"]] == "COMPLETED"
    assert store.failures >= refused


@contextlib.contextmanager
def small_disk(path: Path, size: str = "2m"):
    """A tmpfs at ``path`` (root can mount one); None where mounting is not allowed."""
    path.mkdir(parents=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    ok = subprocess.run(mount, check=False, capture_output=True)
    try:
        yield ok.returncode == 0
    finally:
        if ok.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def _fill(dirpath: Path) -> Path:
    filler = dirpath / "filler"
    # Unbuffered: nothing is left to fail at close.
    with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    return filler


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
async def test_a_full_data_dir_answers_503_and_every_accepted_job_survives_a_kill9(tmp_path, http, how):
    disk = tmp_path / "disk"
    with small_disk(disk) if how == "tmpfs" else contextlib.nullcontext(False) as mounted:
        if not mounted:
            disk.mkdir(exist_ok=True)
        data = disk / "data"
        args = ("--data-dir", str(data), "--no-rate-limits")
        s = start_serve(tmp_path, *args, target=ECHO, name="s1")
        accepted: list[str] = []
        try:
            for i in range(10):
                status, body, _ = await call(http, "POST", f"{s.url}/run", {"input": {"i": i}})
                assert status == 200
                accepted.append(body["id"])
            if mounted:
                filler = _fill(disk)
            else:  # no mount here: a file-size limit on serve makes every journal write fail the same way
                resource.prlimit(s.proc.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
            codes = []
            for i in range(20):
                status, body, headers = await call(http, "POST", f"{s.url}/run", {"input": {"full": i, **BIG_INPUT}})
                codes.append(status)
                if status == 200:
                    accepted.append(body["id"])
                else:
                    assert status == 503 and "Retry-After" in headers
            assert 503 in codes and set(codes) <= {200, 503}
            _, health, _ = await call(http, "GET", f"{s.url}/health")
            assert health["workers"]["idle"] + health["workers"]["running"] == 1
            if mounted:
                filler.unlink()
            else:
                resource.prlimit(s.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            status, body, _ = await call(http, "POST", f"{s.url}/run", {"input": {"after": 1}})
            assert status == 200
            accepted.append(body["id"])
        finally:
            s.kill9()
        rows = journaled(data / "jobs.sqlite3")
        assert set(accepted) <= set(rows), f"accepted but not journaled: {set(accepted) - set(rows)}"
        print(f"full disk by {'tmpfs' if mounted else 'RLIMIT_FSIZE'}: {codes.count(503)} x 503")


async def test_an_unwritable_data_dir_at_start_is_one_error_line_and_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    p = subprocess.run(
        [sys.executable, "-m", "handler_sdk.serve", "--port", "0", "--data-dir", str(blocker / "data")],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot open job store"), p.stderr
    assert "Traceback" not in p.stderr


async def test_a_full_data_dir_at_start_is_one_error_line_and_exit_2(tmp_path):
    disk = tmp_path / "disk"
    with small_disk(disk, "64k") as mounted:
        if mounted:
            _fill(disk)
            pre = None
        else:

            def pre() -> None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))

        p = subprocess.run(
            [sys.executable, "-m", "handler_sdk.serve", "--port", "0", "--data-dir", str(disk / "data")],
            check=False, capture_output=True, text=True, cwd=ROOT, timeout=60, preexec_fn=pre,
        )  # fmt: skip
        assert p.returncode == 2, p.stderr
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr


async def test_a_retry_the_journal_refuses_answers_503_and_leaves_the_job_as_it_was(endpoint_factory, tmp_path):
    log = tmp_path / "runs.log"
    ep = await endpoint_factory(load_handler(str(HANDLERS) + ":record"), data_dir=tmp_path / "data")
    store = ep.broker.store
    status, job, _ = await call(ep.http, "POST", f"{ep.url}/run", {"input": {"log": str(log), "n": "not-a-file"}})
    assert status == 200
    await ep.wait_status(job["id"], "COMPLETED")
    r = ep.broker.retained.thaw(job["id"])  # the record itself, not its compact form
    r.status, r.error = S_FAILED, "made to fail for the test"  # a FAILED job as the broker would hold it
    r.input = {"log": str(log), "n": "not-a-file"}  # a completed job's input is dropped, a failed one's kept
    ep.broker.counts[S_COMPLETED] -= 1
    ep.broker.counts[S_FAILED] += 1
    runs_before = log.read_text().count(job["id"])

    def read_only(on: int) -> None:
        store._conn.execute(f"PRAGMA query_only = {on}")

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(store._exec, read_only, 1)
    status, body, headers = await call(ep.http, "POST", f"{ep.url}/retry/{job['id']}", timeout=10)
    assert status == 503 and int(headers["Retry-After"]) >= 1, (status, body)
    await asyncio.sleep(0.3)
    status, seen, _ = await call(ep.http, "GET", f"{ep.url}/status/{job['id']}")
    assert seen["status"] == "FAILED" and seen["error"] == "made to fail for the test"
    assert log.read_text().count(job["id"]) == runs_before  # the refused retry never ran
    assert ep.broker.health()["jobs"]["failed"] == 1
    await loop.run_in_executor(store._exec, read_only, 0)
    status, body, _ = await call(ep.http, "POST", f"{ep.url}/retry/{job['id']}", timeout=10)
    assert status == 200, body
    await ep.wait_status(job["id"], "COMPLETED")
    assert log.read_text().count(job["id"]) == runs_before + 1
