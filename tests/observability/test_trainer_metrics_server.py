"""The trainer's own /metrics endpoint (prometheus-client on a stdlib WSGI server), without a training run."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.support.waiting import free_port
from tuneforge.trainer.metrics_server import ENV_ADDR, ENV_PORT, start_from_env


class FakeReporter:
    def __init__(self) -> None:
        self.metrics_rows: list[dict[str, object]] = []


def test_serves_the_latest_values(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv(ENV_PORT, str(port))
    monkeypatch.setenv(ENV_ADDR, "127.0.0.1")
    reporter = FakeReporter()
    server = start_from_env("ftjob-abc", reporter)
    assert server is not None and server.port == port
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        text = httpx.get(url, timeout=5).text
        assert "tuneforge_trainer_step" not in text and 'tuneforge_trainer_uptime_seconds{job_id="ftjob-abc"}' in text
        reporter.metrics_rows += [
            {"step": 1, "total_steps": 10, "train_loss": 2.0, "tokens_per_second": 100.0},
            {"step": 2, "valid_loss": 1.75},
            {"step": 3, "total_steps": 10, "train_loss": 1.5, "tokens_per_second": 120.0, "eta_seconds": 7.0},
        ]
        response = httpx.get(url, timeout=5)
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        lines = set(response.text.splitlines())
        for expected in ('tuneforge_trainer_step{job_id="ftjob-abc"} 3.0',
                         'tuneforge_trainer_train_loss{job_id="ftjob-abc"} 1.5',
                         'tuneforge_trainer_valid_loss{job_id="ftjob-abc"} 1.75',
                         'tuneforge_trainer_tokens_per_second{job_id="ftjob-abc"} 120.0',
                         "# TYPE tuneforge_trainer_step gauge"):
            assert expected in lines, response.text
        assert any(line.startswith("tuneforge_trainer_process_resident_memory_bytes") for line in lines)
        assert httpx.get(f"http://127.0.0.1:{port}/other", timeout=5).status_code == 404
        # a second trainer on the same port runs on without an endpoint
        assert start_from_env("ftjob-other", reporter) is None
    finally:
        server.stop()


def test_values_that_are_not_finite_numbers_are_skipped_and_openmetrics_is_negotiated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_PORT, "0")  # any free port
    monkeypatch.setenv(ENV_ADDR, "127.0.0.1")
    reporter = FakeReporter()
    reporter.metrics_rows += [{"step": 4, "train_loss": 1.25, "valid_loss": 0.5},
                              {"step": 5, "train_loss": float("nan"), "valid_loss": True, "learning_rate": "x"}]
    server = start_from_env('ftjob-"quoted"\\', reporter)
    assert server is not None
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        text = httpx.get(url, timeout=5).text
        job = 'job_id="ftjob-\\"quoted\\"\\\\"'  # label values escaped by the library
        assert f"tuneforge_trainer_step{{{job}}} 5.0" in text
        assert f"tuneforge_trainer_train_loss{{{job}}} 1.25" in text  # the NaN is skipped, not exported
        assert f"tuneforge_trainer_valid_loss{{{job}}} 0.5" in text
        assert "tuneforge_trainer_learning_rate" not in text
        openmetrics = httpx.get(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}, timeout=5)
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.endswith("# EOF\n")
        assert httpx.post(url, timeout=5).status_code == 405
    finally:
        server.stop()


@pytest.mark.parametrize("port", ["70000", "-1", "eighty"])
def test_a_bad_port_leaves_training_without_the_endpoint(monkeypatch: pytest.MonkeyPatch, port: str) -> None:
    monkeypatch.setenv(ENV_PORT, port)
    assert start_from_env("ftjob-abc", FakeReporter()) is None


def test_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_PORT, raising=False)
    assert start_from_env("ftjob-abc", FakeReporter()) is None


def test_imports_no_web_framework_and_no_torch() -> None:
    code = ("import sys, tuneforge.trainer.metrics_server as m; "
            "bad = [n for n in ('torch', 'fastapi', 'starlette', 'prometheus_client') if n in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
