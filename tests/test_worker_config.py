"""Worker settings from env vars: our names, runpod's names and URL templates, and bad values refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANDLERS, ROOT

from handler_sdk.errors import ConfigError
from handler_sdk.worker.config import endpoints_from_env, worker_config_from_env

B = "http://127.0.0.1:8000/v2/ep1"

# What a runpod worker container gets (the platform convention: every template already has a "?").
RUNPOD = {
    "RUNPOD_WEBHOOK_GET_JOB": f"{B}/job-take/$ID?gpu=SIM",
    "RUNPOD_WEBHOOK_POST_OUTPUT": f"{B}/job-done/$RUNPOD_POD_ID/$ID?gpu=SIM",
    "RUNPOD_WEBHOOK_POST_STREAM": f"{B}/job-stream/$RUNPOD_POD_ID/$ID?gpu=SIM",
    "RUNPOD_WEBHOOK_PING": f"{B}/ping/$RUNPOD_POD_ID?gpu=SIM",
    "RUNPOD_AI_API_KEY": "wkey",
    "RUNPOD_POD_ID": "pod-7",
}


def test_endpoint_url_derives_every_route_for_the_worker_id() -> None:
    ep = endpoints_from_env({"HANDLER_SDK_ENDPOINT_URL": B + "/", "HANDLER_SDK_WORKER_ID": "w1"})
    assert ep.worker_id == "w1"
    assert str(ep.take_url) == f"{B}/job-take/w1"
    assert str(ep.take_batch_url) == f"{B}/job-take-batch/w1"
    assert str(ep.stop_url) == f"{B}/job-stop/w1"
    assert str(ep.hand_back_url) == f"{B}/job-handback/w1"
    assert str(ep.ping_url) == f"{B}/ping/w1"
    assert str(ep.done_url("j-1")) == f"{B}/job-done/w1/j-1"
    assert str(ep.stream_url("j-1")) == f"{B}/job-stream/w1/j-1"
    assert ep.api_key is None


def test_runpod_templates_fill_the_pod_id_and_the_job_id_and_keep_their_query() -> None:
    ep = endpoints_from_env(RUNPOD)
    assert ep.worker_id == "pod-7"
    assert ep.api_key == "wkey"
    # In the take URL runpod's $ID is the worker; in the result URLs it is the job.
    assert str(ep.take_url) == f"{B}/job-take/pod-7?gpu=SIM"
    assert str(ep.done_url("j-1")) == f"{B}/job-done/pod-7/j-1?gpu=SIM"
    assert str(ep.stream_url("j-1")) == f"{B}/job-stream/pod-7/j-1?gpu=SIM"
    assert str(ep.ping_url) == f"{B}/ping/pod-7?gpu=SIM"
    # The routes runpod derives from the take URL keep its query string too.
    assert str(ep.take_batch_url) == f"{B}/job-take-batch/pod-7?gpu=SIM"
    assert str(ep.stop_url) == f"{B}/job-stop/pod-7?gpu=SIM"
    assert str(ep.hand_back_url) == f"{B}/job-handback/pod-7?gpu=SIM"


def test_protocol_parameters_join_a_template_with_or_without_a_query() -> None:
    with_q = endpoints_from_env(RUNPOD)
    without_q = endpoints_from_env({k: v.replace("?gpu=SIM", "") for k, v in RUNPOD.items()})
    # The transport adds its parameters with update_query: no "&" appended blindly, as runpod's worker does.
    params = {"job_in_progress": "0"}
    assert str(with_q.take_url.update_query(params)) == f"{B}/job-take/pod-7?gpu=SIM&job_in_progress=0"
    assert str(without_q.take_url.update_query(params)) == f"{B}/job-take/pod-7?job_in_progress=0"
    assert str(without_q.done_url("j").update_query(isStream="false")) == f"{B}/job-done/pod-7/j?isStream=false"


def test_the_pod_id_template_may_name_the_worker_in_the_take_url_too() -> None:
    env = {**RUNPOD, "RUNPOD_WEBHOOK_GET_JOB": f"{B}/job-take/$RUNPOD_POD_ID?gpu=SIM"}
    assert str(endpoints_from_env(env).take_url) == f"{B}/job-take/pod-7?gpu=SIM"


def test_our_names_come_before_runpods() -> None:
    env = {
        **RUNPOD,
        "HANDLER_SDK_TAKE_URL": "http://other:1/v2/x/job-take/$ID",
        "HANDLER_SDK_WORKER_ID": "ours",
        "HANDLER_SDK_API_KEY": "our-key",
    }
    ep = endpoints_from_env(env)
    assert str(ep.take_url) == "http://other:1/v2/x/job-take/ours"
    assert str(ep.done_url("j")) == f"{B}/job-done/ours/j?gpu=SIM"  # not overridden: runpod's still applies
    assert (ep.worker_id, ep.api_key) == ("ours", "our-key")


def test_explicit_urls_come_before_the_endpoint_url() -> None:
    env = {"HANDLER_SDK_ENDPOINT_URL": B, "RUNPOD_WEBHOOK_PING": "http://elsewhere/ping/$RUNPOD_POD_ID"}
    ep = endpoints_from_env({**env, "HANDLER_SDK_WORKER_ID": "w"})
    assert str(ep.ping_url) == "http://elsewhere/ping/w"
    assert str(ep.take_url) == f"{B}/job-take/w"


def test_empty_values_count_as_unset() -> None:
    env = {
        "HANDLER_SDK_ENDPOINT_URL": B,
        "HANDLER_SDK_WORKER_ID": "",
        "RUNPOD_POD_ID": "pod",
        "RUNPOD_WEBHOOK_GET_JOB": "",
    }
    ep = endpoints_from_env(env)
    assert ep.worker_id == "pod"
    assert str(ep.take_url) == f"{B}/job-take/pod"


def test_the_worker_id_defaults_to_the_host_name_and_a_random_suffix() -> None:
    a = endpoints_from_env({"HANDLER_SDK_ENDPOINT_URL": B})
    b = endpoints_from_env({"HANDLER_SDK_ENDPOINT_URL": B})
    assert a.worker_id != b.worker_id
    assert a.worker_id.rsplit("-", 1)[0] == b.worker_id.rsplit("-", 1)[0]
    assert str(a.take_url) == f"{B}/job-take/{a.worker_id}"


def test_a_missing_ping_url_is_derived_from_the_take_url() -> None:
    env = {k: v for k, v in RUNPOD.items() if k != "RUNPOD_WEBHOOK_PING"}
    assert str(endpoints_from_env(env).ping_url) == f"{B}/ping/pod-7?gpu=SIM"


def test_no_endpoint_configured_is_a_config_error_naming_what_is_missing() -> None:
    with pytest.raises(ConfigError, match=r"HANDLER_SDK_ENDPOINT_URL.*missing: take, done, stream\)"):
        endpoints_from_env({})
    only_take = {"RUNPOD_WEBHOOK_GET_JOB": RUNPOD["RUNPOD_WEBHOOK_GET_JOB"]}
    with pytest.raises(ConfigError, match=r"missing: done, stream\)"):
        endpoints_from_env(only_take)


# --- timings and delivery ----------------------------------------------------------------------------------


def test_worker_settings_default_to_production_values() -> None:
    cfg = worker_config_from_env({})
    assert cfg.ping_interval_s == 10.0
    assert cfg.drain_timeout_s == 30.0
    assert cfg.report_retries == 5
    assert (cfg.backoff_base_s, cfg.backoff_max_s) == (0.2, 10.0)
    # Takes have their own, shorter cap: after an outage a worker is back within ~2 s, not ~10.
    assert cfg.take_backoff_max_s == 2.0
    assert cfg.spool_dir == Path(".handler_sdk_spool")


def test_the_take_backoff_cap_is_its_own_setting() -> None:
    cfg = worker_config_from_env({"HANDLER_SDK_TAKE_BACKOFF_MAX_S": "0.5", "HANDLER_SDK_BACKOFF_MAX_S": "30"})
    assert (cfg.take_backoff_max_s, cfg.backoff_max_s) == (0.5, 30.0)
    with pytest.raises(ConfigError, match="HANDLER_SDK_TAKE_BACKOFF_MAX_S"):
        worker_config_from_env({"HANDLER_SDK_TAKE_BACKOFF_MAX_S": "-1"})


def test_worker_settings_read_our_names_and_runpods_ping_interval_in_milliseconds() -> None:
    cfg = worker_config_from_env(
        {
            "RUNPOD_PING_INTERVAL": "2000",
            "HANDLER_SDK_DRAIN_TIMEOUT_S": "0.5",
            "HANDLER_SDK_REPORT_RETRIES": "0",
            "HANDLER_SDK_BACKOFF_BASE_S": "0.01",
            "HANDLER_SDK_BACKOFF_MAX_S": "1.5",
            "HANDLER_SDK_SPOOL_DIR": "/var/spool/results",
        }
    )
    assert cfg.ping_interval_s == 2.0
    assert cfg.drain_timeout_s == 0.5
    assert cfg.report_retries == 0
    assert (cfg.backoff_base_s, cfg.backoff_max_s) == (0.01, 1.5)
    assert cfg.spool_dir == Path("/var/spool/results")
    # Ours first; and unlike runpod's worker, intervals under a second are honoured, not truncated to 0.
    both = worker_config_from_env({"RUNPOD_PING_INTERVAL": "2000", "HANDLER_SDK_PING_INTERVAL_MS": "250"})
    assert both.ping_interval_s == 0.25


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HANDLER_SDK_PING_INTERVAL_MS", "fast"),
        ("RUNPOD_PING_INTERVAL", "10s"),
        ("HANDLER_SDK_PING_INTERVAL_MS", "0"),
        ("HANDLER_SDK_DRAIN_TIMEOUT_S", "-1"),
        ("HANDLER_SDK_REPORT_RETRIES", "many"),
        ("HANDLER_SDK_REPORT_RETRIES", "inf"),
        ("HANDLER_SDK_REPORT_RETRIES", "2.5"),
        ("HANDLER_SDK_BACKOFF_BASE_S", "nan"),
        ("HANDLER_SDK_BACKOFF_MAX_S", "-0.1"),
    ],
)
def test_bad_values_are_config_errors_that_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        worker_config_from_env({name: value})
    # The variable the user set, not its HANDLER_SDK_ alias (the zero case names both).
    assert re.search(rf"(?<![A-Z_]){name}\b", str(e.value)), str(e.value)


def run_worker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HANDLER_SDK_", "RUNPOD_"))}
    return subprocess.run(
        [sys.executable, "-m", "handler_sdk.worker", str(HANDLERS / "wk_jobs.py") + ":single_echo"],
        env={**clean, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "worker endpoint not configured"),
        ({"HANDLER_SDK_ENDPOINT_URL": B, "HANDLER_SDK_DRAIN_TIMEOUT_S": "soon"}, "HANDLER_SDK_DRAIN_TIMEOUT_S"),
    ],
)
def test_the_worker_exits_2_on_bad_configuration_before_contacting_anyone(env: dict[str, str], message: str) -> None:
    done = run_worker(env)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
