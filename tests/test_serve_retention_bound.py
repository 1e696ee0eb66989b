"""--max-retained-mb over real HTTP and a real SQLite journal: with a bound a few hundred jobs overflow, the
finished jobs past it leave memory, and every /run and /runsync result still answers /status (a streamed one
/stream, a failed one /retry) until its retention ends; a restart loads only what fits and answers for the rest."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from handler_sdk.handler import Handler
from handler_sdk.job import Job
from handler_sdk.serve.state.broker import BrokerConfig
from tests.conftest import until

BOUND = 20_000  # bytes: about 80 no-op records in their compact form
MINUTE = 60_000


def _cfg(**kw: Any) -> BrokerConfig:
    return BrokerConfig(run_retention_ms=MINUTE, sync_retention_ms=MINUTE, max_retained_bytes=BOUND, **kw)


async def _echo_or_fail(job: Job) -> Any:
    if job.input.get("fail"):
        raise ValueError("asked to fail")
    return job.input


async def _submit_many(ep: Any, n: int) -> dict[str, dict[str, Any]]:
    """n /run and n /runsync jobs; job id -> the input it echoes."""
    sem = asyncio.Semaphore(16)

    async def one(route: str, i: int) -> tuple[str, dict[str, Any]]:
        async with sem:
            inp = {"route": route, "i": i}
            code, body = await ep.post(route, {"input": inp})
            assert code == 200, body
            return body["id"], inp

    pairs = await asyncio.gather(*(one(route, i) for i in range(n) for route in ("run", "runsync")))
    jobs = dict(pairs)
    for job_id in jobs:
        if not job_id.startswith("sync-"):
            await ep.wait_status(job_id, "COMPLETED")
    return jobs


def _rows(data: Path) -> int:
    conn = sqlite3.connect(f"file:{data / 'jobs.sqlite3'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
    finally:
        conn.close()


async def test_past_the_bound_every_run_and_runsync_result_stays_readable_then_expires(endpoint_factory, tmp_path):
    data = tmp_path / "data"
    ep = await endpoint_factory(Handler(_echo_or_fail, concurrency=8), data_dir=data, broker=_cfg())
    jobs = await _submit_many(ep, 200)
    retained = ep.broker.retained
    assert retained.evicted > 0 and retained.bytes <= BOUND
    assert sum(job_id in ep.broker.jobs for job_id in jobs) < len(jobs) / 2  # most live on disk only
    for job_id, inp in jobs.items():
        code, body = await ep.get(f"status/{job_id}")
        assert code == 200 and body["status"] == "COMPLETED" and body["output"] == inp, (job_id, body)
    _, health = await ep.get("health")
    assert health["jobs"]["completed"] == len(jobs)  # counted whether in memory or on disk
    _, listed = await ep.get("requests", params={"limit": 500})
    assert listed["total"] == len(jobs)  # /requests lists the jobs on disk too, after those in memory
    assert sorted(row["id"] for row in listed["requests"]) == sorted(jobs)
    # Retention lowered to nothing: every job expires, from memory and from disk alike.
    for job_id in jobs:
        assert (await ep.get(f"status/{job_id}", params={"ttl": "0"}))[0] == 200

    async def all_gone() -> bool:
        for job_id in jobs:
            if (await ep.get(f"status/{job_id}"))[0] != 404:
                return False
        return True

    await until(all_gone)
    await ep.broker.durable()

    async def swept() -> bool:
        await ep.broker.durable()
        return _rows(data) == 0

    await until(swept)

    async def uncounted() -> bool:  # those on disk are counted by the second they expire in
        return (await ep.get("health"))[1]["jobs"]["completed"] == 0

    await until(uncounted)


async def test_an_evicted_streamed_job_streams_and_an_evicted_failed_job_retries(endpoint_factory, tmp_path):
    async def stream_or_fail(job: Job) -> Any:
        if job.input.get("fail"):
            raise ValueError("asked to fail")
        for i in range(job.input.get("n", 0)):
            yield {"piece": i}

    ep = await endpoint_factory(Handler(stream_or_fail, concurrency=8), data_dir=tmp_path / "data", broker=_cfg())
    _, streamed = await ep.post("run", {"input": {"n": 3}})
    _, failed = await ep.post("run", {"input": {"fail": True}})
    _, failed_sync = await ep.post("runsync", {"input": {"fail": True}})
    await ep.wait_status(streamed["id"], "COMPLETED")
    await ep.wait_status(failed["id"], "FAILED")
    for i in range(60):  # streamed records are kept whole (~700 B each): these push the first ones out
        _, body = await ep.post("runsync", {"input": {"n": 1, "i": i}})
        assert body["status"] == "COMPLETED"
    for job in (streamed, failed, failed_sync):
        assert job["id"] not in ep.broker.jobs
    code, body = await ep.get(f"stream/{streamed['id']}")
    assert code == 200 and body["status"] == "COMPLETED"
    assert [item["output"] for item in body["stream"]] == [{"piece": 0}, {"piece": 1}, {"piece": 2}]
    assert (await ep.get(f"stream/{streamed['id']}"))[1]["stream"] == []  # the cursor moved, on disk too
    for job in (failed, failed_sync):
        code, body = await ep.post(f"retry/{job['id']}")
        assert code == 200 and body["status"] == "IN_QUEUE"
        reply = await ep.wait_status(job["id"], "FAILED")
        assert reply["retries"] == 1 and "asked to fail" in reply["error"]


async def test_a_repeated_idempotency_key_finds_its_job_after_the_bound_moved_it_to_disk(endpoint_factory, tmp_path):
    ep = await endpoint_factory(Handler(_echo_or_fail, concurrency=8), data_dir=tmp_path / "data", broker=_cfg())
    first = {}
    for route in ("run", "runsync"):
        code, body = await ep.post(route, {"input": {"keyed": route}}, headers={"Idempotency-Key": f"k-{route}"})
        assert code == 200, body
        first[route] = body["id"]
    await ep.wait_status(first["run"], "COMPLETED")
    await _submit_many(ep, 100)
    assert not any(job_id in ep.broker.jobs for job_id in first.values())  # both live on disk only
    for route, job_id in first.items():
        key = {"Idempotency-Key": f"k-{route}"}
        async with ep.http.post(f"{ep.url}/{route}", json={"input": {"keyed": route}}, headers=key) as r:
            body = await r.json()
            assert r.status == 200 and body["id"] == job_id, body  # the same job, not a second one
            assert r.headers.get("Idempotent-Replayed") == "true"
        if route == "runsync":
            assert body["status"] == "COMPLETED" and body["output"] == {"keyed": route}
        code, body = await ep.post(route, {"input": {"other": 1}}, headers=key)
        assert code == 422 and job_id in body["error"], body  # the key names that request only
    _, health = await ep.get("health")
    assert health["jobs"]["completed"] == 202  # no job was made twice


async def test_requests_pages_through_memory_then_disk_with_each_job_once(endpoint_factory, tmp_path):
    ep = await endpoint_factory(Handler(_echo_or_fail, concurrency=8), data_dir=tmp_path / "data", broker=_cfg())
    jobs = await _submit_many(ep, 100)
    _, failed = await ep.post("runsync", {"input": {"fail": True}})
    assert any(job_id not in ep.broker.jobs for job_id in jobs)
    seen: list[str] = []
    offset = 0
    while True:
        _, page = await ep.get("requests", params={"limit": 37, "offset": offset})
        assert page["total"] == len(jobs) + 1
        if not page["requests"]:
            break
        seen += [row["id"] for row in page["requests"]]
        offset += 37
    assert sorted(seen) == sorted([*jobs, failed["id"]])
    assert seen[0] == failed["id"]  # newest first
    _, done = await ep.get("requests", params={"limit": 500, "status": "COMPLETED"})
    assert done["total"] == len(jobs) and failed["id"] not in {row["id"] for row in done["requests"]}


async def test_a_restart_loads_only_what_fits_the_bound_and_reads_the_rest_from_disk(endpoint_factory, tmp_path):
    data = tmp_path / "data"
    first = await endpoint_factory(Handler(_echo_or_fail, concurrency=8), data_dir=data, broker=_cfg())
    jobs = await _submit_many(first, 150)
    # /runsync jobs are journaled only as the bound evicts them: those still in memory end with the process.
    lost = {job_id for job_id in jobs if job_id.startswith("sync-") and job_id in first.broker.jobs}
    await first.broker.durable()
    await first.server.close()
    second = await endpoint_factory(Handler(_echo_or_fail, concurrency=8), data_dir=data, broker=_cfg())
    retained = second.broker.retained
    assert 0 < retained.bytes <= BOUND and retained.on_disk
    held = [job_id for job_id in jobs if job_id in second.broker.jobs]
    assert 0 < len(held) < len(jobs) / 2
    for job_id, inp in jobs.items():
        code, body = await second.get(f"status/{job_id}")
        if job_id in lost:
            assert code == 404
        else:
            assert code == 200 and body["status"] == "COMPLETED" and body["output"] == inp, (job_id, body)
    _, health = await second.get("health")
    assert health["jobs"]["completed"] == len(jobs) - len(lost)


async def test_big_outputs_past_the_bound_read_back_whole_from_their_own_table_and_after_a_restart(
    endpoint_factory, tmp_path
):
    data = tmp_path / "data"
    h = Handler(_echo_or_fail, concurrency=8)
    ep = await endpoint_factory(h, data_dir=data, broker=_cfg())
    big: dict[str, dict[str, Any]] = {}
    for i in range(4):
        for route in ("run", "runsync"):
            inp = {"route": route, "image": f"{i}" * 50_000}
            code, body = await ep.post(route, {"input": inp})
            assert code == 200, body
            big[body["id"]] = inp
    for job_id in big:
        if not job_id.startswith("sync-"):
            await ep.wait_status(job_id, "COMPLETED")
    await _submit_many(ep, 60)  # small jobs behind them push them out of memory
    assert not any(job_id in ep.broker.jobs for job_id in big)
    await ep.broker.durable()
    conn = sqlite3.connect(f"file:{data / 'jobs.sqlite3'}?mode=ro", uri=True)
    try:
        apart = {i for (i,) in conn.execute("SELECT id FROM outputs")}
        empty = {i for (i,) in conn.execute("SELECT id FROM jobs WHERE output = X''")}
    finally:
        conn.close()
    assert apart == empty == set(big)  # every big output in its own table, its row's left empty
    for job_id, inp in big.items():
        code, body = await ep.get(f"status/{job_id}")
        assert code == 200 and body["status"] == "COMPLETED" and body["output"] == inp, job_id
    await ep.server.close()
    again = await endpoint_factory(h, data_dir=data, broker=_cfg())
    for job_id, inp in big.items():
        code, body = await again.get(f"status/{job_id}")
        assert code == 200 and body["output"] == inp, job_id
