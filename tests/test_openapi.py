"""The OpenAPI document: valid OpenAPI 3.1, built from the models, covering every route the app serves, with the
handler's input_model as /run's input; Swagger UI from the package; and a bounded schemathesis fuzz run."""

from __future__ import annotations

import asyncio
import sys

import pytest
from openapi_spec_validator import validate

from handler_sdk.loader import load_handler
from handler_sdk.serve.http.client import ClientLimits
from handler_sdk.serve.http.openapi import build_document
from handler_sdk.serve.server import ServeConfig, Server
from tests.conftest import ROOT

TYPED = str(ROOT / "examples" / "typed.py")


def test_the_document_validates_as_openapi_3_with_and_without_an_input_model():
    validate(build_document("local"))
    validate(build_document("local", load_handler(TYPED).input_model))


def _served(server: Server) -> set[tuple[str, str]]:
    app = server.build_app()
    out = set()
    for resource in app.router.resources():
        path = resource.canonical
        if path.endswith("/{tail}") or path.startswith("/docs/"):  # the catch-alls, Swagger UI's own files
            continue
        out |= {(route.method, path) for route in resource if route.method != "HEAD"}
    return out


def test_every_route_the_app_serves_is_in_the_document_and_nothing_else(tmp_path):
    server = Server(ServeConfig(data_dir=None, endpoint_id="ep1"), load_handler(TYPED))
    doc = build_document("ep1")
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert _served(server) == documented


def test_the_run_input_schema_is_the_handlers_input_model():
    doc = build_document("local", load_handler(TYPED).input_model)
    schemas = doc["components"]["schemas"]
    assert schemas["RunRequest"]["properties"]["input"] == {"$ref": "#/components/schemas/Params"}
    assert schemas["Params"]["required"] == ["prompt"]
    assert schemas["Params"]["properties"]["n"]["maximum"] == 8
    # Without one, input is any object.
    plain = build_document("local")["components"]["schemas"]["RunRequest"]["properties"]["input"]
    assert plain["type"] == "object"


def test_error_replies_and_the_documented_5xx_are_in_the_document():
    paths = build_document("local")["paths"]
    chat = paths["/v2/local/openai/v1/chat/completions"]["post"]["responses"]
    assert {"500", "504"} <= set(chat)
    assert chat["500"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OpenAIErrorReply"}
    run = paths["/v2/local/run"]["post"]["responses"]
    assert {"400", "401", "413", "422", "429", "503"} <= set(run)
    assert paths["/metrics"]["get"]["responses"]["501"]


def test_the_wait_clamp_in_the_document_is_the_servers():
    doc = build_document("local", lim=ClientLimits(min_wait_ms=5, max_wait_ms=700))
    (wait,) = [p for p in doc["paths"]["/v2/local/runsync"]["post"]["parameters"] if p["name"] == "wait"]
    assert "5-700" in wait["description"]


async def test_both_paths_serve_the_document_and_docs_without_the_key(endpoint_factory, http):
    ep = await endpoint_factory(TYPED, api_key="k")
    base = f"http://127.0.0.1:{ep.server.port}"
    async with http.get(f"{base}/openapi.json") as r:
        assert r.status == 200
        doc = await r.json()
    async with http.get(f"{ep.url}/openapi.json") as r:
        assert await r.json() == doc
    assert doc["components"]["schemas"]["RunRequest"]["properties"]["input"]["$ref"].endswith("/Params")
    async with http.get(f"{base}/docs") as r:
        assert r.status == 200 and r.content_type == "text/html"
        html = await r.text()
    assert "http" not in html  # no CDN: every asset comes from this server
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f'"/docs/{asset}"' in html
        async with http.get(f"{base}/docs/{asset}") as r:
            assert r.status == 200 and len(await r.read()) > 100_000
    async with http.get(f"{ep.url}/health") as r:
        assert r.status == 401  # the data still needs the key


def test_the_static_files_are_package_data():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"handler_sdk.serve.http" = ["static/*.html", "static/swagger-ui/*"]' in text
    for f in ("dashboard.html", "swagger-ui/swagger-ui-bundle.js", "swagger-ui/swagger-ui.css", "swagger-ui/LICENSE"):
        assert (ROOT / "handler_sdk" / "serve" / "http" / "static" / f).is_file()


async def test_a_held_in_process_worker_with_hold_0_does_not_spin(endpoint_factory):
    # Regression (found setting up the fuzz run): with take_hold_s=0 the in-process worker's job-stop poll
    # returned at once and was re-asked at once, so the event loop never served a request.
    ep = await endpoint_factory("echo_async.py", take_hold_s=0)
    async with asyncio.timeout(10):
        code, body = await ep.post("runsync", {"input": {"x": 1}})
    assert code == 200 and body["status"] == "COMPLETED"


async def test_an_idempotency_key_on_a_request_holding_an_integer_beyond_64_bits_is_not_a_500(endpoint_factory):
    # Regression (found by the fuzz run below): the request's fingerprint was written by orjson, which refuses
    # integers beyond 64 bits, so such a body with an Idempotency-Key answered 500.
    ep = await endpoint_factory("echo_async.py")
    body = {"input": {"n": 2**70}}
    code, first = await ep.post("run", body, headers={"Idempotency-Key": "big"})
    assert code == 200, first
    code, again = await ep.post("run", body, headers={"Idempotency-Key": "big"})
    assert code == 200 and again["id"] == first["id"]
    code, other = await ep.post("run", {"input": {"n": 2**70 + 1}}, headers={"Idempotency-Key": "big"})
    assert code == 422, other
    code, sync = await ep.post("runsync", body, headers={"Idempotency-Key": "big-sync"})
    assert code == 200 and sync["output"] == {"n": 2**70}


FUZZ_CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
    "response_headers_conformance"
)


def fuzz_config() -> ServeConfig:
    """A serve for fuzzing: worker routes never hold, waits end within a second, the events stream within half."""
    cfg = ServeConfig(port=0, rate_limits=False, take_hold_s=0, api_key="k", dashboard_events_s=0.5)
    cfg.client = ClientLimits(default_wait_ms=1000, max_wait_ms=1000, stream_hold_ms=0)
    return cfg


async def run_schemathesis(url: str, *args: str, timeout: float) -> tuple[int, str]:
    st = [sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"]
    proc = await asyncio.create_subprocess_exec(
        *st, "run", url, "-H", "Authorization: Bearer k", "--checks", FUZZ_CHECKS, "--workers", "1",
        "--request-timeout", "5", "--seed", "1", "--no-color", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


async def test_fuzzing_the_api_from_its_document_finds_no_5xx_and_no_reply_off_the_document(endpoint_factory):
    cfg = fuzz_config()
    ep = await endpoint_factory("echo_async.py", **{k: getattr(cfg, k) for k in (
        "take_hold_s", "api_key", "dashboard_events_s", "client")})  # fmt: skip
    code, out = await run_schemathesis(
        f"http://127.0.0.1:{ep.server.port}/openapi.json", "--max-examples", "25",
        "--phases", "examples,coverage,fuzzing", timeout=110,
    )  # fmt: skip
    assert code == 0, out[-6000:]
    assert " passed" in out and "failed" not in out.split("SUMMARY")[-1], out[-3000:]


@pytest.mark.parametrize("bad", ["/v2/local/status/%00", "/v2/local/dashboard/jobs/%2e%2e"])
async def test_odd_job_ids_in_the_path_are_plain_404s(endpoint_factory, http, bad):
    ep = await endpoint_factory("echo_async.py")
    async with http.get(f"http://127.0.0.1:{ep.server.port}{bad}") as r:
        assert r.status == 404
        assert "error" in await r.json()
