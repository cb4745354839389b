"""`tuneforge jobs follow` / `jobs create --wait`: the progress view reads the SSE stream."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import httpx
import pytest
from rich.console import Console

from tests.observability.test_stream_and_metrics import _post, _running_job
from tests.support.live_server import ThreadServer
from tuneforge.service.cli.client import Client
from tuneforge.service.cli.progress_view import follow, throughput_text, trainer_throughput

pytestmark = pytest.mark.timeout(120)


def test_follow_prints_steps_from_the_stream_and_returns_the_final_job(api_server: ThreadServer) -> None:
    with api_server.client() as http:
        job_id = _running_job(api_server, http)
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=140)
    client = Client(api_server.url, api_key=api_server.api_key)
    result: dict[str, Any] = {}
    streams_before = _open_streams(api_server)
    thread = threading.Thread(target=lambda: result.update(follow(client, job_id, console)), daemon=True)
    thread.start()
    # the progress view subscribes to the stream (the gauge counts it) before anything happens
    deadline = time.monotonic() + 20
    while _open_streams(api_server) <= streams_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _open_streams(api_server) == streams_before + 1
    for step in (1, 2, 3):
        _post(api_server, job_id, step, step=step, train_loss=3.0 - step / 10, tokens_per_second=100.0 + step,
              eta_seconds=120 - step)
    time.sleep(0.5)
    with api_server.client() as http:
        assert http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
    thread.join(timeout=30)
    assert not thread.is_alive(), "follow() did not return when the job ended"
    client.close()
    text = out.getvalue()
    assert result["status"] == "cancelled"
    for step in (1, 2, 3):
        assert f"step {step}/100, loss {3.0 - step / 10:.4f}, {100 + step} tok/s, ETA 01:{60 - step:02d}" in text, text
    assert "cancelled by the user" in text
    assert text.count("step 1/100") == 1  # each event once


def _open_streams(server: ThreadServer) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("tuneforge_event_streams_open "):
            return float(line.split()[1])
    return 0.0


def test_the_closing_line_reports_the_trainers_median_throughput(api_server: ThreadServer) -> None:
    """Not the job's ``progress.tokens_per_second``, which is only the last report (here a slow last step)."""
    with api_server.client() as http:
        job_id = _running_job(api_server, http)
    client = Client(api_server.url, api_key=api_server.api_key)
    try:
        assert trainer_throughput(client, job_id) is None and throughput_text(client, job_id) == ""
        for step, tps in enumerate((96.0, 101.5, 99.0, 104.0, 15.0), start=1):
            _post(api_server, job_id, step, step=step, train_loss=2.0, tokens_per_second=tps)
        _post(api_server, job_id, 6, step=5, valid_loss=1.5)  # an evaluation report: no tokens/s
        assert client.get(f"/v1/fine_tuning/jobs/{job_id}")["progress"]["tokens_per_second"] == 15.0
        assert trainer_throughput(client, job_id) == (99.0, 5)
        assert throughput_text(client, job_id) == ", 99 tokens/s (median of 5 trainer reports)"
    finally:
        client.close()
