"""The SQLite journal on a real file: every kind of change survives close and reopen, group commit, WAL, and a
Broker restarted on it requeues orphaned jobs and keeps finished ones readable."""

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from handler_sdk.errors import NotFound, StoreError
from handler_sdk.models import ErrorDetails, JobStatus, RunRequest
from handler_sdk.serve.state.broker import Broker, BrokerConfig
from handler_sdk.serve.state.record import JobRecord
from handler_sdk.serve.state.store import JobStore
from tests.conftest import until

S = JobStatus


async def opened(path: Path) -> tuple[JobStore, dict[str, JobRecord], dict[str, Any]]:
    store = JobStore(path)
    records, meta = await store.open()
    return store, {r.id: r for r in records}, meta


async def reopen(store: JobStore) -> tuple[JobStore, dict[str, JobRecord], dict[str, Any]]:
    await store.close()
    return await opened(store.path)


def record(job_id: str = "job-1", **kw: Any) -> JobRecord:
    return JobRecord(job_id, {"prompt": "hi", "n": [1, 2]}, 1_000, **kw)


# --- the store on its own --------------------------------------------------------------------------------------


async def test_new_store_creates_the_file_and_loads_nothing(tmp_path: Path) -> None:
    store, records, meta = await opened(tmp_path / "sub" / "jobs.db")
    assert records == {} and meta == {}
    assert (tmp_path / "sub" / "jobs.db").exists()
    await store.close()


async def test_journal_is_in_wal_mode(tmp_path: Path) -> None:
    store, _, _ = await opened(tmp_path / "jobs.db")
    await store.close()
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_inserted_job_survives_close_and_reopen_with_every_field(tmp_path: Path) -> None:
    store, _, _ = await opened(tmp_path / "jobs.db")
    r = record(webhook="http://hook", execution_timeout=500, ttl=9_000, low_priority=True, retention=60_000)
    store.insert(r)
    await store.flush()
    store, records, _ = await reopen(store)
    got = records["job-1"]
    assert got.input == {"prompt": "hi", "n": [1, 2]}
    assert got.state() == r.state()
    assert got.status is S.IN_QUEUE and got.output is None and got.stream == []
    await store.close()


async def test_a_job_is_found_by_its_idempotency_key_queued_written_and_in_a_journal_from_before_the_key_column(
    tmp_path: Path,
) -> None:
    store, _, _ = await opened(tmp_path / "jobs.db")
    store.insert(record("job-1", idempotency=("k1", "fp1")))
    store.insert(record("job-2"))
    got = await store.read_key("k1")
    assert got is not None and got.id == "job-1"  # queued, not committed yet
    await store.flush()
    got = await store.read_key("k1")
    assert got is not None and got.id == "job-1" and got.idempotency == ("k1", "fp1")  # through the index
    assert await store.read_key("k2") is None
    await store.close()
    with sqlite3.connect(tmp_path / "jobs.db") as conn:  # as a journal written before the key column was
        conn.execute("DROP INDEX jobs_idem")
        conn.execute("ALTER TABLE jobs DROP COLUMN idem")
    store, _, _ = await opened(tmp_path / "jobs.db")
    got = await store.read_key("k1")
    assert got is not None and got.id == "job-1"
    store.delete(["job-1"])
    assert await store.read_key("k1") is None  # its delete is queued: the key is free
    await store.close()


def test_a_journaled_state_leaves_defaults_out_and_reads_back_every_field_old_rows_included() -> None:
    fresh = record(retention=60_000)
    assert set(fresh.state()) == {"status", "created", "retention"}  # a third of the old row
    assert JobRecord.restore("job-1", None, fresh.state(), None).state() == fresh.state()
    busy = record(retention=60_000, webhook="http://hook", ttl=5_000, low_priority=True, retries=2)
    busy.started, busy.ended, busy.worker_id, busy.cursor, busy.error = 1_001, 1_002, "w-1", 3, "boom"
    assert JobRecord.restore("job-1", None, busy.state(), None).state() == busy.state()
    old = {  # a row as journals before this change wrote it: every field, defaults included
        "status": "COMPLETED", "created": 1_000, "started": 1_001, "ended": 1_002, "error": None,
        "error_details": None, "retries": 0, "attempt": 0, "worker_id": "w-1", "webhook": None,
        "execution_timeout": None, "ttl": None, "requeued": None, "low_priority": False, "retention": 60_000,
        "cursor": 0, "webhook_events": None, "idempotency": None, "trace": None,
    }  # fmt: skip
    back = JobRecord.restore("job-1", None, old, None)
    assert back.state() == {k: v for k, v in old.items() if v is not None and v != 0}


def _state_as_filtered(r: JobRecord) -> dict[str, Any]:
    """A record's journaled state as it was first defined: every field, then those at their default dropped."""
    optional = {
        "started": r.started, "ended": r.ended, "error": r.error, "error_details": r.error_details,
        "retries": r.retries, "attempt": r.attempt, "worker_id": r.worker_id, "webhook": r.webhook,
        "execution_timeout": r.execution_timeout, "ttl": r.ttl, "requeued": r.requeued,
        "low_priority": r.low_priority, "cursor": r.cursor,
        "webhook_events": None if r.webhook_events is None else sorted(r.webhook_events),
        "idempotency": r.idempotency, "trace": r.trace,
    }  # fmt: skip
    d = {"status": r.status.value, "created": r.created, "retention": r.retention}
    d.update({k: v for k, v in optional.items() if v is not None and v != 0})
    return d


_maybe_int = st.none() | st.integers(min_value=0, max_value=2**53)
_maybe_text = st.none() | st.text(max_size=8)


@given(
    st.sampled_from(list(S)), _maybe_int, _maybe_int, _maybe_text, st.none() | st.dictionaries(st.text(), st.text()),
    st.integers(0, 5), st.integers(0, 5), _maybe_text, _maybe_int, _maybe_int, st.booleans(), st.integers(0, 5),
    st.none() | st.frozensets(st.sampled_from(["start", "progress", "output"])),
    st.none() | st.tuples(st.text(max_size=4), st.text(max_size=4)), _maybe_text,
)  # fmt: skip
def test_a_journaled_state_is_byte_for_byte_what_the_filtered_form_wrote(
    status, started, ended, error, details, retries, attempt, worker, timeout, ttl, low, cursor, events, key, tp
) -> None:
    r = record(retention=60_000)
    r.status, r.started, r.ended, r.error, r.error_details = status, started, ended, error, details
    r.retries, r.attempt, r.worker_id, r.execution_timeout, r.ttl = retries, attempt, worker, timeout, ttl
    r.requeued, r.low_priority, r.cursor, r.webhook_events, r.idempotency, r.trace = ttl, low, cursor, events, key, tp
    r.webhook = worker
    assert orjson.dumps(r.state()) == orjson.dumps(_state_as_filtered(r))


async def test_updated_status_output_and_error_survive_reopen(tmp_path: Path) -> None:
    store, _, _ = await opened(tmp_path / "jobs.db")
    r = record()
    store.insert(r)
    await store.flush()
    r.status, r.started, r.ended, r.worker_id = S.FAILED, 1_100, 1_300, "w1"
    r.output, r.error = b'{"partial":true}', "ValueError: boom"
    r.error_details = {"error_type": "ValueError", "error_message": "boom", "error_traceback": "tb"}
    r.retries, r.cursor = 2, 1
    store.update(r)
    await store.flush()
    store, records, _ = await reopen(store)
    got = records["job-1"]
    assert got.state() == r.state()
    assert got.output == b'{"partial":true}'
    await store.close()


async def test_stream_items_survive_reopen_in_order(tmp_path: Path) -> None:
    store, _, _ = await opened(tmp_path / "jobs.db")
    store.insert(record())
    items = [b'{"output":%d,"metrics":{"stream_index":%d,"scenario":"stream"}}' % (i, i) for i in range(12)]
    for i, item in enumerate(items):
        store.add_stream("job-1", i, item)
    await store.flush()
    store, records, _ = await reopen(store)
    assert records["job-1"].stream == items
    await store.close()


async def test_reset_stream_drops_journaled_and_pending_items(tmp_path: Path) -> None:
    store, _, _ = await opened(tmp_path / "jobs.db")
    store.insert(record())
    store.add_stream("job-1", 0, b"old0")
    await store.flush()
    store.add_stream("job-1", 1, b"old1")  # still pending when the reset comes
    store.reset_stream("job-1")
    store.add_stream("job-1", 0, b"new0")
    await store.flush()
    store, records, _ = await reopen(store)
    assert records["job-1"].stream == [b"new0"]
    await store.close()


async def test_deleted_jobs_and_their_streams_are_gone_after_reopen(tmp_path: Path) -> None:
    store, _, _ = await opened(tmp_path / "jobs.db")
    for i in range(3):
        store.insert(record(f"job-{i}"))
        store.add_stream(f"job-{i}", 0, b"item")
    await store.flush()
    store.delete(["job-0", "job-2"])
    await store.flush()
    store, records, _ = await reopen(store)
    assert set(records) == {"job-1"}
    await store.close()
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        assert conn.execute("SELECT DISTINCT job_id FROM stream").fetchall() == [("job-1",)]


async def test_insert_then_delete_before_any_commit_writes_nothing(tmp_path: Path) -> None:
    store, _, _ = await opened(tmp_path / "jobs.db")
    r = record()
    store.insert(r)
    store.add_stream(r.id, 0, b"x")
    store.update(r)
    store.delete([r.id])
    await store.flush()
    store, records, _ = await reopen(store)
    assert records == {}
    await store.close()


async def test_meta_values_survive_reopen_and_the_latest_wins(tmp_path: Path) -> None:
    store, _, _ = await opened(tmp_path / "jobs.db")
    store.set_meta("retried", 1)
    store.set_meta("retried", 5)
    store.set_meta("other", {"a": [1]})
    await store.flush()
    store, _, meta = await reopen(store)
    assert meta == {"retried": 5, "other": {"a": [1]}}
    await store.close()


async def test_many_changes_then_one_flush_commit_in_one_transaction(tmp_path: Path) -> None:
    store, _, _ = await opened(tmp_path / "jobs.db")
    before = store.commits
    records = [record(f"job-{i}") for i in range(200)]
    for r in records:
        store.insert(r)
        store.add_stream(r.id, 0, b"s")
    for r in records[::2]:
        r.status = S.CANCELLED
        store.update(r)
    store.set_meta("retried", 3)
    await store.flush()
    assert store.commits - before == 1
    store, loaded, _ = await reopen(store)
    assert len(loaded) == 200
    assert sum(r.status is S.CANCELLED for r in loaded.values()) == 100
    assert all(r.stream == [b"s"] for r in loaded.values())
    await store.close()


async def test_latest_state_of_a_job_is_what_gets_written(tmp_path: Path) -> None:
    store, _, _ = await opened(tmp_path / "jobs.db")
    r = record()
    store.insert(r)
    for status in (S.IN_PROGRESS, S.COMPLETED):
        r.status = status
        store.update(r)
    r.output = b'"done"'
    await store.flush()
    store, records, _ = await reopen(store)
    assert records["job-1"].status is S.COMPLETED and records["job-1"].output == b'"done"'
    await store.close()


async def test_flush_with_nothing_pending_resolves(tmp_path: Path) -> None:
    store, _, _ = await opened(tmp_path / "jobs.db")
    await store.flush()
    await store.close()


async def test_close_commits_what_was_still_pending(tmp_path: Path) -> None:
    store, _, _ = await opened(tmp_path / "jobs.db")
    store.insert(record())
    store, records, _ = await reopen(store)  # no flush: close itself drains the queue
    assert set(records) == {"job-1"}
    await store.close()


async def test_unopenable_path_raises_store_error(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    store = JobStore(tmp_path / "adir")
    with pytest.raises(StoreError, match="cannot open job store"):
        await store.open()
    await store.close()


def journaled(path: Path, job_id: str) -> str | None:
    """The job's status as another process reads the journal now (WAL: while the store has it open)."""
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else str(orjson.loads(row[0])["status"])


async def journaled_soon(path: Path, job_id: str, status: str) -> None:
    async def there() -> bool:
        return journaled(path, job_id) == status

    await until(there)


async def waiting_lease(path: Path, linger_s: float) -> tuple[JobStore, JobRecord]:
    """A store holding a journaled job whose lease was queued and flushed past (nobody waits for a lease)."""
    store = JobStore(path, linger_s=linger_s)
    await store.open()
    r = record()
    store.insert(r)
    await store.flush()
    r.status, r.started, r.worker_id = S.IN_PROGRESS, 1_100, "w1"
    store.update(r)
    await store.flush()
    return store, r


async def test_a_young_lease_waits_for_its_result_and_both_land_in_one_write(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store, r = await waiting_lease(path, linger_s=60)  # only a flush or close commits within this test
    assert journaled(path, r.id) == "IN_QUEUE"
    r.status, r.ended, r.output = S.COMPLETED, 1_200, b'"ok"'
    store.update(r)
    commits = store.commits
    await store.flush()
    assert store.commits == commits + 1
    assert journaled(path, r.id) == "COMPLETED"
    await store.close()


async def test_a_lease_older_than_linger_is_written_without_a_flush(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store, r = await waiting_lease(path, linger_s=0.05)
    assert journaled(path, r.id) == "IN_QUEUE"
    await journaled_soon(path, r.id, "IN_PROGRESS")
    await store.close()


async def test_a_change_nobody_waits_for_is_written_after_linger_without_a_flush(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = JobStore(path, linger_s=0.05)
    await store.open()
    r = record()
    store.insert(r)
    await store.flush()
    r.status = S.CANCELLED
    store.update(r)
    await journaled_soon(path, r.id, "CANCELLED")
    await store.close()


async def test_a_flush_does_not_wait_out_the_linger(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db", linger_s=60)
    await store.open()
    store.insert(record())
    await asyncio.wait_for(store.flush(), 10)
    await store.close()


async def test_a_young_lease_is_written_with_its_first_stream_items(tmp_path: Path) -> None:
    """Items journaled without their attempt's lease would be followed, after a crash, by a re-run numbered as the
    same attempt."""
    path = tmp_path / "jobs.db"
    store, r = await waiting_lease(path, linger_s=60)
    store.add_stream(r.id, 0, b'"tok"')
    await store.flush()
    assert journaled(path, r.id) == "IN_PROGRESS"
    await store.close()


async def test_close_writes_the_leases_still_waiting(tmp_path: Path) -> None:
    store, r = await waiting_lease(tmp_path / "jobs.db", linger_s=60)
    store, records, _ = await reopen(store)
    assert records[r.id].status is S.IN_PROGRESS and records[r.id].worker_id == "w1"
    await store.close()


async def test_a_deleted_job_with_a_waiting_lease_stays_deleted(tmp_path: Path) -> None:
    store, r = await waiting_lease(tmp_path / "jobs.db", linger_s=60)
    store.delete([r.id])
    store, records, _ = await reopen(store)
    assert records == {}
    await store.close()


# --- the broker restarted on the journal -----------------------------------------------------------------------


def _cfg(**kw: Any) -> BrokerConfig:
    return BrokerConfig(run_retention_ms=10_000, lease_ms=1_000, max_attempts=3, **kw)


async def _broker(path: Path, now: list[int], *, linger_s: float = 0.1, **cfg: Any) -> Broker:
    b = Broker(JobStore(path, linger_s=linger_s), _cfg(**cfg), clock=lambda: now[0])
    await b.open()
    return b


async def _restart(b: Broker, now: list[int]) -> Broker:
    """The same journal opened again by a new broker (default config, the same linger)."""
    assert b.store is not None
    await b.durable()
    await b.store.close()
    return await _broker(b.store.path, now, linger_s=b.store.linger_s)


async def _past_retention(b: Broker, now: list[int]) -> None:
    """The clock moved past a /run job's retention (in _cfg) and what expired then committed."""
    now[0] += _cfg().run_retention_ms + 1
    b.expire_due()
    await b.durable()


def _run(b: Broker, n: int, **policy: Any) -> str:
    return b.submit(RunRequest.model_validate({"input": {"n": n}, "policy": policy})).id


async def test_restart_requeues_in_progress_jobs_and_counts_them_retried(tmp_path: Path) -> None:
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now)
    ids = []
    for n in range(3):
        now[0] += 1
        ids.append(_run(b, n + 1))
    first, second, third = ids
    await b.take("w1", 2)
    b.stream("w1", first, [b'"partial"'], [None])
    b = await _restart(b, now)
    r = b.status(first)
    assert r.status is S.IN_QUEUE and r.retries == 1 and r.worker_id is None and r.started is None
    assert b.status(second).status is S.IN_QUEUE and b.status(third).status is S.IN_QUEUE
    assert b.health()["jobs"] == {"completed": 0, "failed": 0, "inProgress": 0, "inQueue": 3, "retried": 2}
    # They run again, in their original order.
    assert [r.id for r in await b.take("w2", 3)] == [first, second, third]
    assert b.status(first).input == {"n": 1}
    assert b.store is not None
    await b.store.close()


async def test_restart_keeps_finished_jobs_readable_with_output_error_and_stream(tmp_path: Path) -> None:
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now)
    ok, bad = _run(b, 1), _run(b, 2)
    await b.take("w1", 2)
    now[0] += 50
    b.stream("w1", ok, [b'"a"', b'"b"'], [b'{"t":1}', None])
    b.done("w1", ok, S.COMPLETED, output=b'{"answer":42}')
    details = {"error_type": "ValueError", "error_message": "boom", "error_traceback": None}
    b.done("w1", bad, S.FAILED, error="ValueError: boom", details=details)
    b = await _restart(b, now)
    r = b.status(ok)
    assert r.status is S.COMPLETED and orjson.loads(r.output or b"") == {"answer": 42}
    assert r.reply()["executionTime"] == 50
    _, items = b.read_stream(ok)
    assert [orjson.loads(i) for i in items] == [
        {"output": "a", "metrics": {"t": 1, "stream_index": 0, "scenario": "stream", "attempt": 1}},
        {"output": "b", "metrics": {"stream_index": 1, "scenario": "stream", "attempt": 1}},
    ]
    f = b.status(bad)
    assert f.status is S.FAILED and f.error == "ValueError: boom" and f.error_details == details
    assert b.health()["jobs"] == {"completed": 1, "failed": 1, "inProgress": 0, "inQueue": 0, "retried": 0}
    assert b.store is not None
    await b.store.close()


async def test_restart_keeps_the_stream_cursor(tmp_path: Path) -> None:
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now)
    job = _run(b, 1)
    await b.take("w1", 1)
    b.stream("w1", job, [b"1", b"2"], [None, None])
    assert len(b.read_stream(job)[1]) == 2
    b.stream("w1", job, [b"3"], [None])
    b = await _restart(b, now)
    assert [orjson.loads(i)["output"] for i in b.read_stream(job)[1]] == [3]
    assert b.store is not None
    await b.store.close()


async def test_retried_count_survives_a_second_restart(tmp_path: Path) -> None:
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now)
    _run(b, 1)
    await b.take("w1", 1)
    b = await _restart(b, now)
    b = await _restart(b, now)
    assert b.health()["jobs"]["retried"] == 1
    assert b.store is not None
    await b.store.close()


async def test_finished_jobs_expire_after_restart_once_retention_has_passed(tmp_path: Path) -> None:
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now)
    job = _run(b, 1)
    b.cancel(job)
    b = await _restart(b, now)
    assert b.status(job).status is S.CANCELLED
    now[0] += _cfg().run_retention_ms
    b.expire_due()
    with pytest.raises(NotFound):
        b.status(job)
    b = await _restart(b, now)
    with pytest.raises(NotFound):
        b.status(job)
    assert b.store is not None
    await b.store.close()


async def test_ttl_still_applies_to_queued_jobs_after_restart(tmp_path: Path) -> None:
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now)
    job = _run(b, 1, ttl=500)
    b = await _restart(b, now)
    now[0] += 500
    b.expire_due()
    assert b.status(job).status is S.TIMED_OUT
    assert b.store is not None
    await b.store.close()


async def test_a_retried_jobs_ttl_counts_from_the_retry_after_a_restart_too(tmp_path: Path) -> None:
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now)
    job = _run(b, 1, ttl=500)
    now[0] = 1_600
    b.expire_due()
    b.retry(job)  # at 1,600: due at 2,100
    b = await _restart(b, now)
    now[0] = 2_099
    b.expire_due()
    assert b.status(job).status is S.IN_QUEUE
    now[0] = 2_100
    b.expire_due()
    assert b.status(job).status is S.TIMED_OUT
    assert b.store is not None
    await b.store.close()


async def test_retried_job_restarts_with_an_empty_stream(tmp_path: Path) -> None:
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now)
    job = _run(b, 1)
    await b.take("w1", 1)
    b.stream("w1", job, [b"1"], [None])
    b.done("w1", job, S.FAILED, error="E: x")
    b.retry(job)
    b = await _restart(b, now)
    r = b.status(job)
    assert r.status is S.IN_QUEUE and r.stream == [] and r.error is None and r.retries == 1
    assert b.store is not None
    await b.store.close()


async def test_purged_jobs_stay_gone_after_restart(tmp_path: Path) -> None:
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now)
    kept = _run(b, 1)
    await b.take("w1", 1)
    purged = [_run(b, i) for i in range(3)]
    assert b.purge() == 3
    b = await _restart(b, now)
    assert set(b.jobs) == {kept}
    for job in purged:
        with pytest.raises(NotFound):
            b.status(job)
    assert b.store is not None
    await b.store.close()


async def test_runsync_jobs_are_not_journaled(tmp_path: Path) -> None:
    now = [1_000]
    b = await _broker(tmp_path / "jobs.db", now)
    sync = b.submit(RunRequest.model_validate({"input": {}}), sync=True).id
    run = _run(b, 1)
    b = await _restart(b, now)
    assert set(b.jobs) == {run}
    assert sync.startswith("sync-")
    assert b.store is not None
    await b.store.close()


async def test_error_details_too_deep_to_encode_are_journaled_as_text_in_their_shape(
    tmp_path: Path,
) -> None:
    store, _, _ = await opened(tmp_path / "jobs.db")
    deep: Any = "bottom"
    for _ in range(600):
        deep = [deep]
    r = record(status=S.FAILED, error="KeyError: k", error_details={"error_type": "KeyError", "error_message": deep})
    store.insert(r)
    await store.flush()
    store, records, _ = await reopen(store)
    details = ErrorDetails.model_validate(records["job-1"].error_details)
    assert details.error_type == "KeyError" and "bottom" in details.error_message
    await store.close()


async def test_an_update_keeps_a_finished_rows_expiry_and_a_job_that_runs_again_loses_it(tmp_path: Path) -> None:
    store, _, _ = await opened(tmp_path / "jobs.db")
    ended, rerun = record(retention=60_000), record("job-2", retention=60_000)
    for r in (ended, rerun):
        store.insert(r)
        r.status, r.started, r.ended = S.COMPLETED, 1_001, 1_002
        store.update(r)
        store.expire_at(r.id, 9_999)  # left memory: the row carries its expiry
    await store.flush()
    ended.retention = 30_000  # a shorter ttl asked on /status: an update of a finished row
    store.update(ended)
    rerun.status, rerun.started, rerun.ended = S.IN_QUEUE, None, None  # a /retry
    store.update(rerun)
    await store.flush()
    await store.close()
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        rows = dict(conn.execute("SELECT id, expires FROM jobs"))
        states = {i: orjson.loads(s) for i, s in conn.execute("SELECT id, state FROM jobs")}
    assert rows == {"job-1": 9_999, "job-2": None}
    assert states["job-1"]["retention"] == 30_000 and states["job-2"]["status"] == "IN_QUEUE"
