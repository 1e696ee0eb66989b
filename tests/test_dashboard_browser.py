"""The dashboard in a real browser (Debian's chromium driven by Playwright, no browser download): the key
prompt, a job submitted from the form going IN_QUEUE -> IN_PROGRESS -> COMPLETED, a stream arriving live, a cancel.

Saves a screenshot to ``$HANDLER_SDK_TEST_ARTIFACTS`` (default ``test-artifacts/``); with
``HANDLER_SDK_UPDATE_DOCS_PNG=1`` it also refreshes ``docs/dashboard.png`` (taken mid-run).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from handler_sdk.loader import load_handler
from tests.conftest import HANDLERS, ROOT

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/setup installs it)")
ARTIFACTS = Path(os.environ.get("HANDLER_SDK_TEST_ARTIFACTS", ROOT / "test-artifacts"))
STEP_MS = 15_000


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            await b.close()


async def _row(page, job_id: str, status: str) -> None:
    await page.wait_for_selector(f'tr[data-job-id="{job_id}"][data-status="{status}"]', timeout=STEP_MS)


async def _submit_from_form(page, text: str) -> str:
    await page.fill("#submit-input", text)
    await page.click("#submit-btn")
    await page.wait_for_function("document.getElementById('submit-msg').dataset.jobId", timeout=STEP_MS)
    return await page.get_attribute("#submit-msg", "data-job-id")


async def test_the_dashboard_submits_watches_streams_and_cancels_in_a_real_browser(endpoint_factory, browser):
    h = load_handler(str(HANDLERS / "obs_script.py"))
    h.concurrency = 1  # one job at a time, so a second one is seen waiting IN_QUEUE
    ep = await endpoint_factory(h, api_key="k")
    # Some history for the charts: finished, failed and streamed jobs over a few seconds.
    for i in range(12):
        await ep.post("runsync", {"input": {"fail": "bad input"} if i % 5 == 4 else {"sleep": 0.05 * (i % 3)}})
        await asyncio.sleep(0.15)
    page = await browser.new_page(viewport={"width": 1400, "height": 1050})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(f"http://127.0.0.1:{ep.server.port}/")

    # With a key set the page shows nothing but the key prompt.
    await page.wait_for_selector("#login", state="visible", timeout=STEP_MS)
    assert await page.is_hidden("#app")
    assert "COMPLETED" not in await page.inner_text("body")
    await page.fill("#key", "k")
    await page.click("#login button")
    await page.wait_for_selector("#app", state="visible", timeout=STEP_MS)
    await page.wait_for_selector("#conn.live", timeout=STEP_MS)
    assert await page.evaluate("sessionStorage.getItem('handler_sdk_key:/v2/local')") == "k"
    assert await page.evaluate("localStorage.length") == 0
    assert await page.inner_text("#c-completed") == "10"  # as /health counts them
    assert await page.inner_text("#c-failed") == "2"

    # A job submitted from the form waits behind a running one, runs, completes.
    _, blocker = await ep.post("run", {"input": {"sleep": 2.5}})
    job_id = await _submit_from_form(page, '{"sleep": 2}')
    for status in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED"):
        await _row(page, job_id, status)
    assert await page.inner_text(f'tr[data-job-id="{job_id}"] td.id') == job_id  # the full id, as text
    await page.wait_for_function(
        f"document.getElementById('detail-output').textContent.includes('{job_id}') || "
        "document.getElementById('detail-output').textContent.includes('\"sleep\": 2')",
        timeout=STEP_MS,
    )  # fmt: skip
    assert '"sleep": 2' in await page.inner_text("#detail-input")
    assert (await ep.get(f"status/{blocker['id']}"))[1]["status"] == "COMPLETED"

    # A generator job's stream items arrive live, with their metrics, while it runs.
    stream_id = await _submit_from_form(page, '{"stream": 6, "gap": 0.5}')
    await page.wait_for_selector("#stream li", timeout=STEP_MS)
    assert await page.inner_text("#detail-status") == "IN_PROGRESS"
    first = await page.locator("#stream li").count()
    assert first < 6
    assert "tokens=1" in await page.inner_text("#stream li >> nth=0")
    assert "kv_cache_usage=0.25" in await page.inner_text("#stream li >> nth=0")
    # Two more wait behind it: the screenshot shows a queue, a running job and its stream.
    queued = [(await ep.post("run", {"input": {"sleep": 0.5}}))[1]["id"] for _ in range(2)]
    await _row(page, queued[1], "IN_QUEUE")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    mid = await page.screenshot(full_page=True)
    (ARTIFACTS / "dashboard-mid-run.png").write_bytes(mid)
    if os.environ.get("HANDLER_SDK_UPDATE_DOCS_PNG") == "1":
        (ROOT / "docs" / "dashboard.png").write_bytes(mid)
    await page.wait_for_function("document.querySelectorAll('#stream li').length === 6", timeout=STEP_MS)
    await _row(page, stream_id, "COMPLETED")
    for q in queued:
        await _row(page, q, "COMPLETED")

    # A running job's cancel button cancels it.
    _, slow = await ep.post("run", {"input": {"sleep": 60}})
    await _row(page, slow["id"], "IN_PROGRESS")
    await page.click(f'button.cancel[data-job-id="{slow["id"]}"]')
    await _row(page, slow["id"], "CANCELLED")
    assert (await ep.get(f"status/{slow['id']}"))[1]["status"] == "CANCELLED"
    assert await page.locator(f'button.cancel[data-job-id="{slow["id"]}"]').count() == 0

    await page.screenshot(path=str(ARTIFACTS / "dashboard-end.png"), full_page=True)
    assert errors == []


async def test_swagger_ui_at_docs_renders_every_operation_from_package_files(endpoint_factory, browser):
    ep = await endpoint_factory(str(ROOT / "examples" / "typed.py"), api_key="k")
    page = await browser.new_page()
    errors: list[str] = []
    outside: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    base = f"http://127.0.0.1:{ep.server.port}"
    page.on("request", lambda r: None if r.url.startswith(base) or r.url.startswith("data:") else outside.append(r.url))
    await page.goto(f"{base}/docs")
    await page.wait_for_selector(".opblock", timeout=STEP_MS)
    _, doc = await ep.get("openapi.json")
    assert await page.locator(".opblock").count() == sum(len(item) for item in doc["paths"].values())
    assert errors == [] and outside == []  # no CDN, nothing fetched from anywhere else
