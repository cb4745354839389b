"""Progress channel: authenticated POSTs of ProgressBatch, buffering while the service is down."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from tests.support.waiting import free_port
from tuneforge.contracts.jobspec import ProgressChannel
from tuneforge.contracts.progress import ProgressBatch
from tuneforge.trainer.progress import ProgressReporter


class Collector:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.requests.append((self.path, self.headers.get("Authorization", ""), json.loads(body)))
                self.send_response(collector.status)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for _, _, body in self.requests:
            out += ProgressBatch.model_validate(body).model_dump()["events"]
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_posts_batches_with_bearer_token() -> None:
    service = Collector()
    try:
        reporter = ProgressReporter("ftjob-1", ProgressChannel(url=service.url + "/", token="tok-123"))
        reporter.status("running", total_steps=3)
        reporter.emit("metrics", step=1, train_loss=float("nan"), learning_rate=0.1)
        reporter.close()
        paths = {p for p, _, _ in service.requests}
        assert paths == {"/internal/v1/jobs/ftjob-1/progress"}
        assert {a for _, a, _ in service.requests} == {"Bearer tok-123"}
        events = service.events()
        assert [e["kind"] for e in events] == ["status", "metrics"]
        assert events[0]["seq"] < events[1]["seq"]
        assert events[1]["data"]["train_loss"] is None  # NaN is not JSON
    finally:
        service.close()


def test_service_down_buffers_then_delivers() -> None:
    port = free_port()
    reporter = ProgressReporter("ftjob-2", ProgressChannel(url=f"http://127.0.0.1:{port}", token="t"))
    for step in range(5):
        reporter.emit("metrics", step=step)  # must not raise nor block for long
    assert reporter.pending == 5
    service = Collector()
    try:
        reporter.channel = ProgressChannel(url=service.url, token="t")
        assert reporter.flush(force=True)
        assert [e["data"]["step"] for e in service.events()] == [0, 1, 2, 3, 4]
        assert reporter.pending == 0
    finally:
        service.close()


def test_rejected_batches_are_dropped_not_retried() -> None:
    service = Collector(status=401)
    try:
        log = io.StringIO()
        reporter = ProgressReporter("ftjob-3", ProgressChannel(url=service.url, token="bad"), log=log)
        reporter.info("hello")
        assert reporter.pending == 0 and reporter.dropped == 1
        assert "HTTP 401" in log.getvalue()
    finally:
        service.close()


def test_without_channel_prints_json_lines() -> None:
    out = io.StringIO()
    reporter = ProgressReporter("ftjob-4", None, stream=out)
    reporter.emit("result", trained_tokens=10)
    (line,) = out.getvalue().splitlines()
    assert json.loads(line)["data"] == {"trained_tokens": 10}


def test_progress_token_comes_from_the_environment_in_cluster_mode(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The operator passes the spec without its token and the token from a Secret as an env variable."""
    from tuneforge.contracts.jobspec import JobSpec
    from tuneforge.trainer.cli import with_progress_token
    from tuneforge.trainer.settings import TrainerSettings

    spec = JobSpec.model_validate({
        "job_id": "ftjob-x", "tenant_id": "t", "method": {"type": "supervised"}, "base_model": "/m",
        "training_file": {"file_id": "f", "key": "files/f", "format": "chat"},
        "hyperparameters": {"n_epochs": 1, "batch_size": 1, "learning_rate": 1e-4},
        "storage_url": "file:///tmp/s", "output_prefix": "jobs/ftjob-x",
        "progress": {"url": "http://svc:8000", "token": ""},
    })
    monkeypatch.setenv("TUNEFORGE_PROGRESS_TOKEN", "tfjob-secret")
    token = TrainerSettings().progress_token
    assert with_progress_token(spec, token).progress.token == "tfjob-secret"  # type: ignore[union-attr]
    with_token = spec.model_copy(update={"progress": spec.progress.model_copy(update={"token": "own"})})  # type: ignore[union-attr]
    assert with_progress_token(with_token, token).progress.token == "own"  # type: ignore[union-attr]
