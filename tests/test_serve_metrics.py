"""Prometheus /metrics on serve and on a standalone worker: the documented names, parsed by prometheus_client's
own parser, agreeing with /health after a known sequence of jobs."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from handler_sdk.serve.state.limits import Limit, RateLimiter
from tests.conftest import free_port, until, wait_for_line

# The same tests on both job stores: the embedded default and a real redis-server.
pytestmark = pytest.mark.stores("sqlite", "redis")

SCRIPT = "obs_script.py"


async def scrape(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    """Every sample as ``name{label=value,...}`` -> value (labels sorted, replica left out)."""
    async with http.get(url, headers=headers or {}) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "replica")
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def metrics_url(ep) -> str:
    return f"http://127.0.0.1:{ep.server.port}/metrics"


async def test_finished_counts_agree_with_health_after_a_known_sequence(endpoint_factory, http):
    ep = await endpoint_factory(SCRIPT)
    inputs = [
        {"stream": 2},
        {},
        {},
        {"fail": "boom"},
        {"fail": "bang"},
    ]
    ids = [(await ep.post("run", {"input": i}))[1]["id"] for i in inputs]
    _, slow = await ep.post("run", {"input": {"sleep": 30}, "policy": {"executionTimeout": 200}})
    _, cancel = await ep.post("run", {"input": {"sleep": 30}})
    await ep.wait_status(cancel["id"], "IN_PROGRESS")
    assert (await ep.post(f"cancel/{cancel['id']}"))[1]["status"] == "CANCELLED"
    await ep.post("runsync", {"input": {}})
    for job_id in [*ids, slow["id"]]:
        await ep.wait_status(job_id, "COMPLETED", "FAILED", "TIMED_OUT")
    m = await scrape(http, metrics_url(ep))
    _, health = await ep.get("health")
    jobs = health["jobs"]
    assert m["handler_sdk_jobs_finished_total{status=COMPLETED}"] == jobs["completed"] == 4
    fin = "handler_sdk_jobs_finished_total{status=%s}"
    failed = m[fin % "FAILED"] + m[fin % "TIMED_OUT"]
    assert failed == jobs["failed"] == 3
    assert m["handler_sdk_jobs_finished_total{status=TIMED_OUT}"] == 1
    assert m["handler_sdk_jobs_finished_total{status=CANCELLED}"] == 1
    assert m["handler_sdk_jobs_submitted_total{route=run}"] == 7
    assert m["handler_sdk_jobs_submitted_total{route=runsync}"] == 1
    assert m["handler_sdk_jobs_submitted_total{route=openai}"] == 0
    assert m["handler_sdk_queue_depth{}"] == jobs["inQueue"] == 0
    assert m["handler_sdk_jobs_in_progress{}"] == jobs["inProgress"] == 0
    assert m["handler_sdk_workers{state=idle}"] == health["workers"]["idle"] == 1
    assert m["handler_sdk_stream_items_total{}"] == 2
    assert m["handler_sdk_stream_bytes_total{}"] == len(b'{"token":"t0"}') * 2
    # Every job that started was observed once: the eight, less none (the cancelled one started too).
    assert m["handler_sdk_job_delay_seconds_count{}"] == 8
    assert m["handler_sdk_job_execution_seconds_count{}"] == 8
    assert m["handler_sdk_job_execution_seconds_bucket{le=+Inf}"] == 8


async def test_queue_and_in_progress_gauges_read_the_live_queue(endpoint_factory, http):
    ep = await endpoint_factory(None)  # a pure queue: nothing takes the jobs
    for _ in range(3):
        await ep.post("run", {"input": {}})
    m = await scrape(http, metrics_url(ep))
    assert m["handler_sdk_queue_depth{}"] == 3
    assert m["handler_sdk_jobs_in_progress{}"] == 0
    code, _ = await ep.get("job-take/w1")
    assert code == 200
    m = await scrape(http, metrics_url(ep))
    assert m["handler_sdk_queue_depth{}"] == 2
    assert m["handler_sdk_jobs_in_progress{}"] == 1
    assert m["handler_sdk_workers{state=running}"] == 1


async def test_metrics_need_the_api_key_when_one_is_set(endpoint_factory, http):
    ep = await endpoint_factory(SCRIPT, api_key="sekret")
    async with http.get(metrics_url(ep)) as r:
        assert r.status == 401
        assert "API key" in (await r.json())["error"]
    async with http.get(metrics_url(ep), headers={"Authorization": "Bearer wrong"}) as r:
        assert r.status == 401
    m = await scrape(http, metrics_url(ep), {"Authorization": "Bearer sekret"})
    assert "handler_sdk_queue_depth{}" in m


async def test_each_429_is_counted_under_its_group(endpoint_factory, http):
    ep = await endpoint_factory(SCRIPT, rate_limits=True)
    codes = [(await ep.get("requests"))[0] for _ in range(13)]
    assert codes.count(429) == 3
    m = await scrape(http, metrics_url(ep))
    assert m["handler_sdk_rate_limited_total{group=requests}"] == 3
    assert m["handler_sdk_rate_limited_total{group=run}"] == 0


def test_the_limiter_counts_in_flight_refusals_too():
    lim = RateLimiter({"x": Limit(100, 1)})
    assert lim.acquire("x")
    with pytest.raises(Exception, match="concurrent"):
        lim.acquire("x")
    assert lim.limited == {"x": 1}


async def test_without_prometheus_client_serve_works_and_metrics_says_how_to_enable_it(
    endpoint_factory, http, monkeypatch
):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # what an absent package looks like to import
    ep = await endpoint_factory(SCRIPT)
    async with http.get(metrics_url(ep)) as r:
        assert r.status == 501
        assert "pip install 'handler-sdk[metrics]'" in (await r.json())["error"]
    code, body = await ep.post("runsync", {"input": {}})
    assert code == 200 and body["status"] == "COMPLETED"


async def test_metrics_turned_off_answer_501_naming_the_flag(endpoint_factory, http):
    ep = await endpoint_factory(SCRIPT, metrics=False)
    async with http.get(metrics_url(ep)) as r:
        assert r.status == 501
        assert "--no-metrics" in (await r.json())["error"]


async def test_a_standalone_worker_serves_metrics_on_its_port(endpoint_factory, process_factory, http):
    ep = await endpoint_factory(None, api_key="k")
    port = free_port()
    env = {
        "HANDLER_SDK_ENDPOINT_URL": ep.url,
        "HANDLER_SDK_API_KEY": "k",
        "HANDLER_SDK_WORKER_ID": "metered",
        "HANDLER_SDK_METRICS_PORT": str(port),
        "HANDLER_SDK_LOG_FORMAT": "plain",
    }
    p = process_factory("-m", "handler_sdk.worker", f"tests/handlers/{SCRIPT}", env=env, name="worker")
    await asyncio.to_thread(wait_for_line, p, "worker metrics on")
    for i in ({"stream": 3}, {"fail": "x"}):
        _, body = await ep.post("run", {"input": i})
        await ep.wait_status(body["id"], "COMPLETED", "FAILED", timeout=20)
    url = f"http://127.0.0.1:{port}/metrics"
    async with http.get(url) as r:
        assert r.status == 401
    auth = {"Authorization": "Bearer k"}

    async def reported() -> dict[str, float] | None:
        m = await scrape(http, url, auth)
        return m if m["handler_sdk_jobs_finished_total{status=FAILED}"] == 1 else None

    m = await until(reported, 10)
    assert m["handler_sdk_jobs_finished_total{status=COMPLETED}"] == 1
    assert m["handler_sdk_stream_items_total{}"] == 3
    assert m["handler_sdk_job_execution_seconds_count{}"] == 2
    # The worker's counters carry its id as the replica.
    async with http.get(url, headers=auth) as r:
        assert 'replica="metered"' in await r.text()


def test_a_bad_metrics_port_is_refused_naming_the_variable():
    from handler_sdk.errors import ConfigError
    from handler_sdk.worker.metrics import metrics_port_from_env

    assert metrics_port_from_env({}) is None
    assert metrics_port_from_env({"HANDLER_SDK_METRICS_PORT": "9100"}) == 9100
    for bad in ("http", "70000", "-1"):
        with pytest.raises(ConfigError, match="HANDLER_SDK_METRICS_PORT"):
            metrics_port_from_env({"HANDLER_SDK_METRICS_PORT": bad})


def test_latency_histogram_counts_as_prometheus_clients_does() -> None:
    """serve's plain-int histogram renders the samples a prometheus-client Histogram of the same seconds gives."""
    from handler_sdk import metrics

    ex = metrics.Exporter("r1")
    theirs = ex.histogram("a_seconds", "doc").labels(replica="r1")
    ours = metrics.Latency("b_seconds", "doc")
    ex.add(lambda: [ours.family("r1")])
    edges = [int(b * 1000) for b in metrics.LATENCY_BUCKETS if b * 1000 == int(b * 1000)]
    for ms in [0, 2, 3, 7, 24, 26, 10**7, *edges, *(e + 1 for e in edges), *range(0, 400, 7)]:
        theirs.observe(ms / 1000)
        ours.observe_ms(ms)
    samples: dict[str, dict[str, float]] = {"a": {}, "b": {}}
    for fam in text_string_to_metric_families(ex.render().decode()):
        for s in fam.samples:
            if s.name[0] in samples:
                samples[s.name[0]][s.name[1:] + str(sorted(s.labels.items()))] = s.value
    a, b = samples["a"], samples["b"]
    assert a.keys() == b.keys() and len(a) == len(metrics.LATENCY_BUCKETS) + 4  # buckets, +Inf, count, sum, created
    for k in a:
        if "_created" not in k:
            assert a[k] == pytest.approx(b[k], rel=1e-12), k
