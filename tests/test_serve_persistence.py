"""The SQLite journal under the data dir: /run jobs are on disk (WAL) before /run answers, survive a restart
(queued ones run, finished ones stay readable within retention), and runsync jobs are never written."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from handler_sdk.serve.state.broker import BrokerConfig
from handler_sdk.worker.loop import WorkerConfig


def journal(data_dir: Path) -> dict[str, dict[str, Any]]:
    """Every journaled job as another process would read it: id -> {state..., input, output}."""
    conn = sqlite3.connect(f"file:{data_dir / 'jobs.sqlite3'}?mode=ro", uri=True)
    try:
        # A big input lives in the inputs table (its row's input is empty).
        rows = conn.execute(
            "SELECT id, CASE WHEN j.input = X'' THEN i.input ELSE j.input END, state, output FROM jobs j "
            "LEFT JOIN inputs i USING (id)"
        ).fetchall()
    finally:
        conn.close()
    return {
        job_id: {**json.loads(state), "input": json.loads(inp), "output": None if out is None else json.loads(out)}
        for job_id, inp, state, out in rows
    }


async def test_a_run_job_is_in_sqlite_in_wal_mode_before_run_answers(endpoint_factory, tmp_path):
    data = tmp_path / "data"
    ep = await endpoint_factory(None, data_dir=data)  # no handler: the job stays queued
    code, body = await ep.post("run", {"input": {"prompt": "hi"}, "policy": {"executionTimeout": 5000}})
    assert code == 200
    rows = journal(data)  # read at once, from another connection
    assert body["id"] in rows
    row = rows[body["id"]]
    assert row["status"] == "IN_QUEUE" and row["input"] == {"prompt": "hi"}
    assert row["execution_timeout"] == 5000
    conn = sqlite3.connect(data / "jobs.sqlite3")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_runsync_jobs_are_never_journaled(endpoint_factory, tmp_path):
    data = tmp_path / "data"
    ep = await endpoint_factory("echo_async.py", data_dir=data)
    _, sync_job = await ep.post("runsync", {"input": {"a": 1}})
    _, run_job = await ep.post("run", {"input": {"b": 2}})
    await ep.wait_status(run_job["id"], "COMPLETED")
    await ep.broker.durable()
    rows = journal(data)
    assert sync_job["id"] not in rows
    assert rows[run_job["id"]]["status"] == "COMPLETED" and rows[run_job["id"]]["output"] == {"b": 2}


async def test_after_a_restart_queued_jobs_run_and_finished_ones_stay_readable(endpoint_factory, tmp_path):
    data = tmp_path / "data"
    first = await endpoint_factory("echo_async.py", data_dir=data)
    _, done = await first.post("run", {"input": {"n": 0}})
    await first.wait_status(done["id"], "COMPLETED")
    _, sync_job = await first.post("runsync", {"input": {"sync": True}})
    await first.server.close()

    # A pure queue on the same data dir: jobs submitted here only wait.
    second = await endpoint_factory(None, data_dir=data)
    queued = [(await second.post("run", {"input": {"n": i}}))[1]["id"] for i in (1, 2)]
    _, st = await second.get(f"status/{done['id']}")
    assert st["status"] == "COMPLETED" and st["output"] == {"n": 0}
    assert st["delayTime"] >= 0 and st["executionTime"] >= 0
    await second.server.close()
    assert {journal(data)[i]["status"] for i in queued} == {"IN_QUEUE"}

    third = await endpoint_factory("echo_async.py", data_dir=data)
    for n, job_id in enumerate(queued, start=1):
        assert (await third.wait_status(job_id, "COMPLETED"))["output"] == {"n": n}
    assert (await third.get(f"status/{done['id']}"))[1]["output"] == {"n": 0}
    assert (await third.get(f"status/{sync_job['id']}"))[0] == 404
    _, health = await third.get("health")
    assert health["jobs"]["completed"] == 3


async def test_a_job_running_when_the_server_stops_runs_again_after_the_restart(endpoint_factory, tmp_path):
    data, gate = tmp_path / "data", tmp_path / "gate"
    first = await endpoint_factory("ep_gate.py", data_dir=data, worker=WorkerConfig(drain_timeout_s=0.2))
    _, body = await first.post("run", {"input": {"wait_for": str(gate), "tag": "again"}})
    await first.wait_status(body["id"], "IN_PROGRESS")
    await first.server.close()  # the drain deadline passes: the job is handed back, not lost
    assert journal(data)[body["id"]]["status"] in ("IN_QUEUE", "IN_PROGRESS")

    gate.touch()
    second = await endpoint_factory("ep_gate.py", data_dir=data)
    assert (await second.wait_status(body["id"], "COMPLETED"))["output"] == {"tag": "again"}


async def test_stream_items_and_the_cursor_survive_a_restart(endpoint_factory, tmp_path):
    data = tmp_path / "data"
    first = await endpoint_factory("kinds.py:sync_gen", data_dir=data)
    _, body = await first.post("run", {"input": {"n": 4}})
    job_id = body["id"]
    await first.wait_status(job_id, "COMPLETED")
    _, read = await first.get(f"stream/{job_id}")
    assert [i["output"] for i in read["stream"]] == [{"i": i} for i in range(4)]
    await first.server.close()

    second = await endpoint_factory(None, data_dir=data)
    _, again = await second.get(f"stream/{job_id}")
    assert again == {"id": job_id, "status": "COMPLETED", "stream": []}  # the cursor was journaled
    _, replay = await second.get(f"stream/{job_id}?from=2")
    assert [i["output"] for i in replay["stream"]] == [{"i": 2}, {"i": 3}]
    assert [i["metrics"]["stream_index"] for i in replay["stream"]] == [2, 3]


async def test_purged_and_expired_jobs_leave_the_journal(endpoint_factory, tmp_path):
    data = tmp_path / "data"
    ep = await endpoint_factory(None, data_dir=data, broker=BrokerConfig(run_retention_ms=100, tick_s=0.02))
    _, purged = await ep.post("run", {"input": {}})
    assert purged["id"] in journal(data)
    await ep.post("purge-queue")
    await ep.broker.durable()
    assert purged["id"] not in journal(data)

    _, cancelled = await ep.post("run", {"input": {}})
    await ep.post(f"cancel/{cancelled['id']}")
    await ep.broker.durable()
    assert journal(data)[cancelled["id"]]["status"] == "CANCELLED"
    # Past retention the job is 404 and its row is gone.
    deadline = 200
    while (await ep.get(f"status/{cancelled['id']}"))[0] != 404:
        deadline -= 1
        assert deadline > 0, "the cancelled job outlived its retention"
        await asyncio.sleep(0.02)
    await ep.broker.durable()
    assert cancelled["id"] not in journal(data)


async def test_retention_still_applies_to_jobs_loaded_after_a_restart(endpoint_factory, tmp_path):
    data = tmp_path / "data"
    first = await endpoint_factory("echo_async.py", data_dir=data, broker=BrokerConfig(run_retention_ms=3000))
    _, body = await first.post("run", {"input": {"k": 1}})
    await first.wait_status(body["id"], "COMPLETED")
    await first.server.close()

    second = await endpoint_factory(None, data_dir=data, broker=BrokerConfig(tick_s=0.02))
    code, st = await second.get(f"status/{body['id']}")
    assert code == 200 and st["output"] == {"k": 1}
    for _ in range(500):
        if (await second.get(f"status/{body['id']}"))[0] == 404:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("a reloaded job outlived its retention")


async def test_the_journal_is_scoped_by_endpoint_id(endpoint_factory, tmp_path):
    data = tmp_path / "shared"
    first = await endpoint_factory(None, data_dir=data, endpoint_id="one", api_key="k1")
    _, job = await first.post("run", {"input": {"of": "one"}})
    await first.server.close()
    # Another endpoint (and key) on the same data dir serves none of the first one's jobs...
    other = await endpoint_factory(None, data_dir=data, endpoint_id="two", api_key="k2")
    assert (await other.get(f"status/{job['id']}"))[0] == 404
    assert (await other.get("health"))[1]["jobs"]["inQueue"] == 0
    _, mine = await other.post("run", {"input": {"of": "two"}})
    await other.server.close()
    # ...and the first one, back, still has its own and not the other's.
    again = await endpoint_factory(None, data_dir=data, endpoint_id="one", api_key="k1")
    assert (await again.get(f"status/{job['id']}"))[1]["status"] == "IN_QUEUE"
    assert (await again.get(f"status/{mine['id']}"))[0] == 404
