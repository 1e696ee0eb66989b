"""The journal rule (``journal.keeps``) on a real SQLite file: a /run job is journaled through every transition,
a /runsync job through none, and both engines' callers ask the one rule."""

from pathlib import Path

from handler_sdk.models import JobStatus, RunRequest
from handler_sdk.serve.state.broker import Broker
from handler_sdk.serve.state.journal import keeps
from handler_sdk.serve.state.local import LocalState
from handler_sdk.serve.state.store import JobStore

S = JobStatus


async def test_the_journal_keeps_run_jobs_and_never_runsync_jobs(tmp_path: Path) -> None:
    broker = Broker(JobStore(tmp_path / "jobs.db"))
    state = LocalState(broker)
    await state.open()
    run, _ = await state.submit(RunRequest(input={"n": 1}))
    sync, _ = await state.submit(RunRequest(input={"n": 2}), sync=True)
    records = {r.id: r for r in (broker.get(run.id), broker.get(sync.id))}
    assert [keeps(r) for r in records.values()] == [True, False]
    leases = await state.take("w", 2, 0)
    assert {x.id for x in leases} == set(records)
    await state.stream("w", sync.id, [b'"tok"'], [None])
    await state.stream("w", run.id, [b'"tok"'], [None])
    for job_id in records:
        await state.done("w", job_id, S.COMPLETED, output=b'"out"')
    await state.close()

    reopened = Broker(JobStore(tmp_path / "jobs.db"))
    await reopened.open()
    assert set(reopened.jobs) == {run.id}, "only the /run job is in the journal"
    r = reopened.jobs[run.id]
    assert r.status is S.COMPLETED and r.output == b'"out"' and len(r.stream) == 1
    assert reopened.store is not None
    await reopened.store.close()
