"""The examples as tests, with handler_sdk.testing: each handler runs exactly as serve would run it, no server.

python -m pytest examples/test_examples.py
"""

from pathlib import Path

from handler_sdk.loader import load_handler
from handler_sdk.testing import run, stream

HERE = Path(__file__).parent


def example(name):
    return load_handler(str(HERE / name))


def test_echo_returns_its_input():
    result = run(example("echo.py"), {"hello": "world"})
    assert result.status == "COMPLETED"
    assert result.output == {"hello": "world"}


def test_streaming_yields_words_with_metrics_then_a_final_total():
    result = run(example("streaming.py"), {"words": 3})
    assert result.stream == [{"word": "w0"}, {"word": "w1"}, {"word": "w2"}]
    assert [item.metrics["words_so_far"] for item in result.stream_items] == [1, 2, 3]
    assert result.output == {"total": 3}


def test_streaming_items_arrive_one_by_one():
    words = [item["word"] for item in stream(example("streaming.py"), {"words": 4})]
    assert words == ["w0", "w1", "w2", "w3"]


def test_progress_reports_each_step():
    result = run(example("progress.py"), {"steps": 3})
    assert result.output == {"trained_steps": 3}
    assert result.progress[-1] == {"step": 3, "of": 3}


def test_a_cancelled_sync_job_stops_early():
    result = run(example("sync_cancellable.py"), {"seconds": 30}, cancel_after=0.2)
    assert result.status == "CANCELLED"


def test_a_timeout_ends_the_job_timed_out():
    result = run(example("sync_cancellable.py"), {"seconds": 30}, timeout=0.2)
    assert result.status == "TIMED_OUT"
    assert "timeout" in result.error


def test_typed_input_is_validated_before_the_handler_runs():
    ok = run(example("typed.py"), {"prompt": "hi", "n": 2})
    assert ok.output == {"texts": ["hi #0", "hi #1"]}
    bad = run(example("typed.py"), {"n": "many"})
    assert bad.status == "FAILED"
    assert "prompt" in bad.error and "n:" in bad.error


def test_checks_pass_on_this_machine():
    result = run(example("checks.py"), {"x": 1})
    assert result.output == {"model": "checks.py", "input": {"x": 1}}
