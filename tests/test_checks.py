"""Start-up checks: the ready-made ones on this machine, the order they run in, /health while they run, and a
failing check that stops serve and a worker process with exit 1 and its message before any job."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from handler_sdk import ConfigError, SetupError, handler
from handler_sdk.checks import CheckFailed, free_disk, gpu_memory, model_file
from handler_sdk.models import JobStatus
from handler_sdk.testing import arun
from tests.conftest import HANDLERS


def test_free_disk_compares_the_free_space_of_the_path_with_its_minimum(tmp_path: Path):
    free_disk(0, tmp_path)()
    free_gb = shutil.disk_usage(tmp_path).free / 1e9
    with pytest.raises(CheckFailed, match=rf"GB free at {tmp_path}, {free_gb * 10:.0f}") as e:
        free_disk(round(free_gb * 10), tmp_path)()
    assert "GB needed" in str(e.value)


def test_model_file_wants_an_existing_non_empty_file_or_directory(tmp_path: Path):
    with pytest.raises(CheckFailed, match="does not exist"):
        model_file(tmp_path / "w.bin")()
    (tmp_path / "w.bin").write_bytes(b"12")
    model_file(tmp_path / "w.bin")()
    with pytest.raises(CheckFailed, match="partial download"):
        model_file(tmp_path / "w.bin", min_bytes=3)()
    (tmp_path / "d").mkdir()
    with pytest.raises(CheckFailed, match="empty directory"):
        model_file(tmp_path / "d")()
    (tmp_path / "d" / "config.json").write_text("{}")
    model_file(tmp_path / "d")()


def test_gpu_memory_measures_with_torch_or_says_why_it_cannot():
    torch = pytest.importorskip("torch")
    check = gpu_memory(0.001)
    if not torch.cuda.is_available():
        with pytest.raises(CheckFailed, match="CUDA is not available"):
            check()
        gpu_memory(0.001, required=False)()  # passes, measuring nothing
        return
    check()
    total = torch.cuda.mem_get_info(0)[1] / 1e9
    with pytest.raises(CheckFailed, match=r"GB free of .* on cuda:0"):
        gpu_memory(total * 2)()
    with pytest.raises(CheckFailed, match="does not exist"):
        gpu_memory(1, device=torch.cuda.device_count())()


def test_checks_must_be_functions():
    with pytest.raises(ConfigError, match="checks must be a list of functions"):
        handler(checks=["free_disk"])(lambda job: None)


async def test_checks_run_in_order_before_the_setup_hook_sync_or_async(monkeypatch):
    monkeypatch.delenv("CK_GATE", raising=False)
    from tests.handlers import ck_gate

    ck_gate.RAN.clear()
    result = await arun(ck_gate.order)
    assert result.output == {"ran": ["gate", "sync", "setup"], "state": "ready"}


async def test_a_check_that_returns_false_or_raises_fails_start_up_naming_itself():
    def no_licence() -> bool:
        return False

    with pytest.raises(SetupError, match=r"start-up check .*no_licence failed: it returned False"):
        await arun(handler(checks=[no_licence])(lambda job: 1))

    async def boom() -> None:
        raise OSError("driver missing")

    with pytest.raises(SetupError, match=r"boom failed: OSError: driver missing"):
        await arun(handler(checks=[boom])(lambda job: 1))


async def test_health_counts_the_worker_initializing_while_checks_run(endpoint_factory, tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    monkeypatch.setenv("CK_GATE", str(gate))
    ep = await endpoint_factory("ck_gate.py")
    try:
        health = await ep.client.health()
        assert (health.workers.initializing, health.workers.idle) == (1, 0)
        job = await ep.client.run({})
        await asyncio.sleep(0.2)
        assert (await ep.client.status(job.id)).status is JobStatus.IN_QUEUE
    finally:
        gate.touch()
    assert (await ep.client.wait(job.id, timeout=10)).status is JobStatus.COMPLETED
    health = await ep.client.health()
    assert (health.workers.initializing, health.workers.idle) == (0, 1)


async def test_a_failing_check_stops_serve_with_exit_1_before_any_job(endpoint_factory, caplog):
    ep = await endpoint_factory("ck_fails.py")
    job = await ep.client.run({})
    async with asyncio.timeout(15):
        await ep.server.stopped.wait()
    assert ep.server.exit_code == 1
    assert "start-up check model_file('/nonexistent/weights.safetensors') failed" in caplog.text
    assert (await ep.client.status(job.id)).status is JobStatus.IN_QUEUE


async def test_a_worker_process_with_a_failing_check_exits_1_with_its_message(endpoint_factory, process_factory):
    ep = await endpoint_factory(None)
    job = await ep.client.run({})
    p = process_factory(
        "-m", "handler_sdk.worker", str(HANDLERS / "ck_fails.py"),
        env={"HANDLER_SDK_ENDPOINT_URL": ep.url, "HANDLER_SDK_LOG_FORMAT": "plain"}, name="worker",
    )  # fmt: skip
    rc = await asyncio.to_thread(p.proc.wait, 30)
    assert rc == 1
    assert "/nonexistent/weights.safetensors does not exist" in p.output()
    assert (await ep.client.status(job.id)).status is JobStatus.IN_QUEUE
