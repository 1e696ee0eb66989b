"""``python -m handler_sdk.serve`` as a real subprocess: its options, a failing setup hook's exit code, one-shot
``--test-input`` mode, and every example in examples/ run through one-shot mode."""

from __future__ import annotations

import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import HANDLERS, ROOT, Proc, free_port, wait_for_line

READY = "handler_sdk endpoint ready"


def call(method: str, url: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def serve(process_factory: Any, *args: str, name: str = "serve") -> tuple[Proc, str]:
    port = free_port()
    p = process_factory("-m", "handler_sdk.serve", *args, "--port", str(port), name=name)
    wait_for_line(p, READY)
    return p, f"http://127.0.0.1:{port}/v2"


def stop(p: Proc) -> int:
    p.proc.send_signal(signal.SIGTERM)
    return p.proc.wait(30)


def one_shot(*args: str, cwd: Path = ROOT, timeout: float = 60) -> tuple[int, Any, str]:
    """Run one-shot mode; returns (exit code, the final JSON it printed, stderr)."""
    r = subprocess.run(
        [sys.executable, "-m", "handler_sdk.serve", *args], capture_output=True, timeout=timeout, cwd=cwd, check=False
    )
    return r.returncode, final_json(r.stdout.decode()), r.stderr.decode()


def final_json(stdout: str) -> Any:
    """The job JSON one-shot prints: its standard output is that one line and nothing else, or empty."""
    lines = stdout.splitlines()
    assert len(lines) <= 1, f"one-shot wrote more than the job's JSON to stdout: {stdout[:500]!r}"
    return json.loads(lines[0]) if lines else None


# --- serving -------------------------------------------------------------------------------------------------


def test_serve_answers_on_the_given_endpoint_id_with_the_api_key_and_stops_cleanly(process_factory, tmp_path):
    p, base = serve(
        process_factory,
        str(HANDLERS / "echo_async.py"),
        "--endpoint-id", "myep", "--api-key", "k3y", "--data-dir", str(tmp_path / "d"),
    )  # fmt: skip
    code, body = call("POST", f"{base}/myep/runsync", {"input": {"via": "cli"}}, key="k3y")
    assert code == 200 and body["status"] == "COMPLETED" and body["output"] == {"via": "cli"}
    assert call("GET", f"{base}/myep/health")[0] == 401
    assert call("GET", f"{base}/myep/health", key="wrong")[0] == 401
    assert call("GET", f"{base}/local/health", key="k3y")[0] == 404
    code, body = call("POST", f"{base}/myep/run", {"input": {"n": 1}}, key="k3y")
    assert code == 200
    assert (tmp_path / "d" / "jobs.sqlite3").is_file()
    assert stop(p) == 0


def test_rate_limits_are_on_by_default_and_no_rate_limits_turns_them_off(process_factory, tmp_path):
    limited, base = serve(process_factory, "--data-dir", str(tmp_path / "a"), name="limited")
    codes = [call("POST", f"{base}/local/purge-queue")[0] for _ in range(3)]
    assert codes == [200, 200, 429]
    free, base = serve(process_factory, "--data-dir", str(tmp_path / "b"), "--no-rate-limits", name="free")
    codes = [call("POST", f"{base}/local/purge-queue")[0] for _ in range(3)]
    assert codes == [200, 200, 200]
    assert stop(limited) == 0 and stop(free) == 0


def test_a_failing_setup_hook_exits_non_zero_and_queued_jobs_stay_queued(process_factory, tmp_path):
    data = tmp_path / "data"
    queue_only, base = serve(process_factory, "--data-dir", str(data), name="queue")
    code, body = call("POST", f"{base}/local/run", {"input": {"waits": True}})
    assert code == 200
    assert stop(queue_only) == 0

    failing = process_factory(
        "-m", "handler_sdk.serve", str(HANDLERS / "setup_fails.py"), "--data-dir", str(data),
        "--port", str(free_port()), name="failing",
    )  # fmt: skip
    rc = failing.proc.wait(60)
    assert rc != 0
    out = failing.output()
    assert "setup hook failed" in out and "RuntimeError: model weights not found" in out

    conn = sqlite3.connect(data / "jobs.sqlite3")
    try:
        (state,) = conn.execute("SELECT state FROM jobs WHERE id = ?", (body["id"],)).fetchone()
    finally:
        conn.close()
    assert json.loads(state)["status"] == "IN_QUEUE"
    again, base = serve(process_factory, "--data-dir", str(data), name="again")
    assert call("GET", f"{base}/local/status/{body['id']}")[1]["status"] == "IN_QUEUE"
    assert stop(again) == 0


def test_a_module_with_several_handlers_and_none_named_fails_at_start_up(process_factory):
    p = process_factory("-m", "handler_sdk.serve", str(HANDLERS / "kinds.py"), "--port", str(free_port()))
    assert p.proc.wait(60) != 0
    out = p.output()
    assert "several handlers" in out and "kinds.py:" in out
    assert READY not in out


# --- one-shot mode -------------------------------------------------------------------------------------------


def test_one_shot_prints_the_final_job_json_and_exits_0(tmp_path):
    rc, job, _ = one_shot(str(HANDLERS / "echo_async.py"), "--test-input", '{"input": {"a": [1, 2]}}')
    assert rc == 0
    assert job["status"] == "COMPLETED" and job["output"] == {"a": [1, 2]}
    assert job["executionTime"] >= 0


def test_one_shot_of_a_failing_job_exits_1_with_the_error(tmp_path):
    rc, job, _ = one_shot(str(HANDLERS / "raises.py"), "--test-input", '{"input": {"why": "oneshot"}}')
    assert rc == 1
    assert job["status"] == "FAILED" and job["error"] == "ValueError: boom: oneshot"
    assert job["errorDetails"]["error_type"] == "ValueError"


def test_one_shot_iterates_a_generator_and_prints_its_stream(tmp_path):
    rc, job, _ = one_shot(f"{HANDLERS / 'kinds.py'}:async_gen", "--test-input", '{"input": {"n": 3}}')
    assert rc == 0
    assert [i["output"] for i in job["stream"]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert [i["metrics"]["stream_index"] for i in job["stream"]] == [0, 1, 2]
    assert job["output"] == [{"i": 0}, {"i": 1}, {"i": 2}]  # aggregate_stream


def test_one_shot_without_a_value_reads_test_input_json_beside_the_file(tmp_path):
    shutil.copy(HANDLERS / "echo_async.py", tmp_path / "my_handler.py")
    (tmp_path / "test_input.json").write_text('{"input": {"from": "file"}}')
    rc, job, _ = one_shot(str(tmp_path / "my_handler.py"), "--test-input")
    assert rc == 0 and job["output"] == {"from": "file"}
    (tmp_path / "test_input.json").unlink()
    rc, job, err = one_shot(str(tmp_path / "my_handler.py"), "--test-input")
    assert rc != 0 and job is None and "test_input.json" in err


def test_one_shot_with_bad_test_input_exits_non_zero_with_a_message(tmp_path):
    rc, job, err = one_shot(str(HANDLERS / "echo_async.py"), "--test-input", "{not json")
    assert rc not in (0, 1) and job is None and "JSON" in err
    rc, job, err = one_shot(str(HANDLERS / "echo_async.py"), "--test-input", '{"no_input": 1}')
    assert rc not in (0, 1) and job is None and "input" in err


# --- the examples ----------------------------------------------------------------------------------------------

EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
_TEST_INPUT = re.compile(r"--test-input '([^']*)'(.*)$", re.M)


def example_runs() -> list[Any]:
    """Every ``--test-input`` command in each example's docstring (or a plain echo input when it has none)."""
    runs = []
    for path in EXAMPLES:
        text = path.read_text()
        found = _TEST_INPUT.findall(text) or [('{"input": {"hello": "world"}}', "")]
        if "@handler" not in text:
            continue  # not a handler: the client example, the examples' own tests
        if "handler_sdk.vllm" in text:
            continue  # starts vLLM (a minute or more): tests/vllm runs it on the session's shared engine
        for i, (payload, rest) in enumerate(found):
            expect = 1 if "FAILED" in rest else 0
            runs.append(pytest.param(path, payload, expect, id=f"{path.stem}-{i}"))
    return runs


def test_examples_folder_has_examples():
    assert (ROOT / "examples" / "echo.py") in EXAMPLES


@pytest.mark.parametrize(("path", "payload", "expect"), example_runs())
def test_each_example_runs_in_one_shot_mode(path: Path, payload: str, expect: int):
    t0 = time.monotonic()
    rc, job, err = one_shot(str(path.relative_to(ROOT)), "--test-input", payload, timeout=600)
    assert rc == expect, f"{path.name} exited {rc} after {time.monotonic() - t0:.1f}s:\n{err}"
    assert job["status"] == ("COMPLETED" if expect == 0 else "FAILED")


def test_one_shot_stdout_holds_only_the_job_json_and_every_other_write_goes_to_stderr():
    r = subprocess.run(
        [sys.executable, "-m", "handler_sdk.serve", str(HANDLERS / "noisy.py"), "--test-input", '{"input": {}}'],
        capture_output=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    [line] = r.stdout.decode().splitlines()
    assert json.loads(line)["output"] == {"quiet": True}
    err = r.stderr.decode()
    for said in ("import-time print", "setup print", "job print", "raw fd 1 write", "exit-time print"):
        assert said in err


def test_an_endpoint_id_that_cannot_be_a_path_segment_is_refused_at_start(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "handler_sdk.serve", "--endpoint-id", "my endpoint/x", "--data-dir", str(tmp_path)],
        capture_output=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert "endpoint id 'my endpoint/x'" in r.stderr.decode()


def test_max_retained_mb_and_its_env_twin_move_finished_runsync_jobs_to_the_journal(process_factory, tmp_path):
    target = str(HANDLERS / "echo_async.py")
    for how, data in (("flag", tmp_path / "flag"), ("env", tmp_path / "env")):
        port = free_port()
        args = ["-m", "handler_sdk.serve", target, "--port", str(port), "--data-dir", str(data), "--no-rate-limits"]
        env = {"HANDLER_SDK_MAX_RETAINED_MB": "0.01"} if how == "env" else {}
        p = process_factory(*args, *(["--max-retained-mb", "0.01"] if how == "flag" else []), env=env, name=how)
        wait_for_line(p, READY)
        base = f"http://127.0.0.1:{port}/v2/local"
        ids = [call("POST", f"{base}/runsync", {"input": {"i": i}})[1]["id"] for i in range(100)]
        code, body = call("GET", f"{base}/status/{ids[0]}")
        assert code == 200 and body["output"] == {"i": 0}  # read back from the journal
        assert stop(p) == 0
        conn = sqlite3.connect(data / "jobs.sqlite3")
        try:
            journaled = {row[0] for row in conn.execute("SELECT id FROM jobs")}
        finally:
            conn.close()
        assert ids[0] in journaled, how  # the oldest left memory: written to the journal first


def test_a_negative_max_retained_mb_is_one_error_line_and_exit_2(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "handler_sdk.serve", "--data-dir", str(tmp_path), "--max-retained-mb", "-1"],
        capture_output=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert r.returncode == 2 and "--max-retained-mb" in r.stderr.decode()
