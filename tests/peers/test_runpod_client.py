"""The real runpod-python 1.12 client SDK (``runpod.Endpoint``, ``runpod.AsyncioEndpoint``) against ``serve``.

Each test runs scripts/runpod_client.py with the peer interpreter, pointed at an in-process endpoint through
``runpod.endpoint_url_base``, and asserts on the JSON it prints and on the endpoint's own view of the jobs.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.peers

KEY = "peer-client-key"


async def test_run_sync_returns_the_handler_output(endpoint_factory, runpod_client):
    ep = await endpoint_factory("peer_client.py:echo", api_key=KEY)
    res = await runpod_client(ep, "run_sync", {"input": {"prompt": "hi"}})
    out = res["output"]
    assert out["echo"] == {"prompt": "hi"}
    assert out["id"].startswith("sync-")


async def test_run_sync_of_a_failed_job_returns_at_once_without_output(endpoint_factory, runpod_client):
    # FAILED is one of the SDK's final states: it returns reply.get("output") rather than polling /status.
    ep = await endpoint_factory("peer_client.py:echo", api_key=KEY)
    res = await runpod_client(ep, "run_sync", {"input": {"fail": "on purpose"}})
    assert res == {"output": None}
    assert ep.broker.health()["jobs"]["failed"] == 1


async def test_run_then_output_polls_status_until_completed(endpoint_factory, runpod_client):
    ep = await endpoint_factory("peer_client.py:echo", api_key=KEY)
    res = await runpod_client(ep, "run_output", {"input": {"sleep": 1.5, "n": 1}})
    assert res["first_status"] in ("IN_QUEUE", "IN_PROGRESS")
    assert res["output"] == {"echo": {"sleep": 1.5, "n": 1}, "id": res["id"]}
    assert res["status"] == "COMPLETED"
    code, body = await ep.get(f"status/{res['id']}")
    assert (code, body["status"]) == (200, "COMPLETED")


async def test_stream_yields_every_item_once_in_order_then_stops(endpoint_factory, runpod_client):
    # Items arrive over several of the SDK's 1 s polls; a chunk sent twice would be yielded twice, and the loop
    # only ends on a final status with an empty stream.
    ep = await endpoint_factory("peer_client.py:slow_stream", api_key=KEY)
    res = await runpod_client(ep, "stream", {"input": {"n": 6, "gap": 0.4}})
    assert res["items"] == [{"i": i} for i in range(6)]
    assert res["status"] == "COMPLETED"
    body = await ep.wait_status(res["id"], "COMPLETED")
    assert body["output"] == [{"i": i} for i in range(6)]


async def test_cancel_ends_a_running_job_cancelled(endpoint_factory, runpod_client):
    ep = await endpoint_factory("peer_client.py:sleepy", api_key=KEY)
    res = await runpod_client(ep, "cancel", {"input": {"seconds": 60}})
    assert res["seen"][-1] == "IN_PROGRESS"
    assert res["cancel"] == {"id": res["id"], "status": "CANCELLED"}
    assert res["status"] == "CANCELLED"
    assert res["output"] is None  # the SDK counts CANCELLED as completed when it polls /status
    health = ep.broker.health()
    assert health["jobs"]["inProgress"] == 0
    assert health["workers"]["running"] == 0  # the in-process worker's slot is free again


async def test_health_reports_job_counts_and_the_worker(endpoint_factory, runpod_client):
    ep = await endpoint_factory("peer_client.py:echo", api_key=KEY)
    for i in range(2):
        code, body = await ep.post("runsync", {"input": {"i": i}})
        assert (code, body["status"]) == (200, "COMPLETED")
    res = await runpod_client(ep, "health")
    health = res["health"]
    assert health["jobs"] == {"completed": 2, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0}
    assert health["workers"]["idle"] == 1
    assert health["workers"]["running"] == 0


async def test_purge_queue_removes_queued_jobs_and_leaves_the_running_one(endpoint_factory, runpod_client):
    ep = await endpoint_factory("peer_client.py:sleepy", api_key=KEY)
    ids = []
    for _ in range(3):
        code, body = await ep.post("run", {"input": {"seconds": 60}})
        assert code == 200
        ids.append(body["id"])
    await ep.wait_status(ids[0], "IN_PROGRESS")
    res = await runpod_client(ep, "purge")
    assert res["before"]["jobs"]["inQueue"] == 2
    assert res["purge"] == {"removed": 2, "status": "completed"}
    assert res["after"]["jobs"]["inQueue"] == 0
    assert res["after"]["jobs"]["inProgress"] == 1
    for job_id in ids[1:]:
        code, _ = await ep.get(f"status/{job_id}")
        assert code == 404
    code, body = await ep.get(f"status/{ids[0]}")
    assert (code, body["status"]) == (200, "IN_PROGRESS")
    await ep.post(f"cancel/{ids[0]}")


async def test_a_wrong_api_key_raises_the_sdks_unauthorized_error(endpoint_factory, runpod_client):
    # The SDK turns only a 401 into its RuntimeError; any other refusal would surface as requests.HTTPError.
    ep = await endpoint_factory("peer_client.py:echo", api_key=KEY)
    res = await runpod_client(ep, "unauthorized", key="not-the-key")
    for call in ("run_sync", "health"):
        assert res[call]["raised"] == "RuntimeError"
        assert res[call]["message"].startswith("401 Unauthorized")
    assert ep.broker.health()["jobs"]["completed"] == 0


async def test_asyncio_endpoint_runs_waits_for_output_and_streams(endpoint_factory, runpod_client):
    ep = await endpoint_factory("peer_client.py:slow_stream", api_key=KEY)
    params = {"input": {"n": 3, "gap": 0.1}, "stream_input": {"n": 4, "gap": 0.3}, "timeout": 30}
    res = await runpod_client(ep, "asyncio", params)
    assert res["status"] == "COMPLETED"
    assert res["output"] == [{"i": i} for i in range(3)]
    assert res["items"] == [{"i": i} for i in range(4)]
    assert res["health"]["jobs"]["completed"] == 2
