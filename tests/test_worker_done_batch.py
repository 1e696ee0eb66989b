"""The job-done-batch extension: many results in one request, each judged on its own."""

from __future__ import annotations


async def test_done_batch_records_each_result_and_refuses_stale_ones_individually(endpoint_factory):
    ep = await endpoint_factory(None)
    ids = [(await ep.post("run", {"input": {"i": i}}))[1]["id"] for i in range(3)]
    async with ep.http.get(f"{ep.url}/job-take-batch/w1?batch_size=2") as r:
        assert "done-batch" in r.headers["X-Handler-SDK"]
        taken = [j["id"] for j in await r.json()]
    not_taken = next(i for i in ids if i not in taken)
    body = {
        "results": [
            {"id": taken[0], "output": {"ok": 1}},
            {"id": taken[1], "error": "ValueError: nope"},
            {"id": not_taken, "output": "stale"},
            {"id": "no-such-job", "output": 1},
        ]
    }
    async with ep.http.post(f"{ep.url}/job-done-batch/w1", json=body) as r:
        assert r.status == 200
        codes = {x["id"]: x["code"] for x in (await r.json())["results"]}
    assert codes == {taken[0]: 200, taken[1]: 200, not_taken: 409, "no-such-job": 404}
    assert (await ep.get(f"status/{taken[0]}"))[1]["output"] == {"ok": 1}
    failed = (await ep.get(f"status/{taken[1]}"))[1]
    assert failed["status"] == "FAILED" and failed["error"] == "ValueError: nope"
    assert (await ep.get(f"status/{not_taken}"))[1]["status"] == "IN_QUEUE"


async def test_done_batch_with_a_malformed_body_is_a_400(endpoint_factory):
    ep = await endpoint_factory(None)
    for bad in ({"results": "x"}, {"results": [{"no": "id"}]}, [1, 2]):
        async with ep.http.post(f"{ep.url}/job-done-batch/w1", json=bad) as r:
            assert r.status == 400
            assert "error" in await r.json()
