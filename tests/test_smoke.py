import pytest


@pytest.mark.stores("sqlite", "redis")
async def test_runsync_returns_the_echoed_input(endpoint_factory):
    ep = await endpoint_factory("echo_async.py")
    code, body = await ep.post("runsync", {"input": {"hello": "world"}})
    assert code == 200
    assert body["status"] == "COMPLETED"
    assert body["output"] == {"hello": "world"}
    assert body["id"].startswith("sync-")
