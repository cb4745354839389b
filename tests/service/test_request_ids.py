"""``x-request-id`` on every response, and logs (plain or JSON) that carry it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.helpers import chat_file
from tests.support.live_server import ProcessServer, ThreadServer
from tests.support.waiting import wait_for
from tuneforge.service.observability.request_context import request_id_from

GENERATED = re.compile(r"^req_[0-9a-f]{32}$")


def _requests(server: ThreadServer) -> dict[str, httpx.Response]:
    key = {"Authorization": f"Bearer {server.api_key}"}
    url = server.url
    return {
        "health": httpx.get(f"{url}/healthz"),
        "ok": httpx.get(f"{url}/v1/files", headers=key),
        "no key": httpx.get(f"{url}/v1/files"),
        "unknown route": httpx.get(f"{url}/no/such/route", headers=key),
        "missing job": httpx.get(f"{url}/v1/fine_tuning/jobs/ftjob-nope", headers=key),
        "bad body": httpx.post(f"{url}/v1/fine_tuning/jobs", headers=key, json={"model": 3}),
        "method": httpx.put(f"{url}/v1/files", headers=key),
        "upload": httpx.post(f"{url}/v1/files", headers=key, files={"file": ("a.jsonl", chat_file())}),
        "metrics": httpx.get(f"{url}/metrics"),
        "ui": httpx.get(f"{url}/ui"),
    }


def test_every_response_has_a_request_id(api_server: ThreadServer) -> None:
    responses = _requests(api_server)
    statuses = {name: r.status_code for name, r in responses.items()}
    assert statuses == {"health": 200, "ok": 200, "no key": 401, "unknown route": 404, "missing job": 404,
                        "bad body": 400, "method": 405, "upload": 200, "metrics": 200, "ui": 200}
    ids = [r.headers.get("x-request-id", "") for r in responses.values()]
    assert all(GENERATED.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids)


def test_a_stream_has_a_request_id(api_server: ThreadServer) -> None:
    with api_server.client() as client:
        file_id = client.post("/v1/files", files={"file": ("a.jsonl", chat_file())}).json()["id"]
        job_id = client.post("/v1/fine_tuning/jobs",
                             json={"model": "SmolLM2-135M-Instruct", "training_file": file_id}).json()["id"]
        with client.stream("GET", f"/v1/fine_tuning/jobs/{job_id}/events/stream",
                           headers={"x-request-id": "stream-1"}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-request-id"] == "stream-1"


@pytest.mark.parametrize("sent,kept", [
    ("abc-123", True), ("trace:4bf92f3577b34da6a3ce929d0e0e4736", True), ("a" * 128, True), ("x.y_z", True),
    ("a" * 129, False), ("has space", False), ("", False), ("new\\nline", False), ("ünïcode", False),
    ("<script>", False),
])
def test_a_clients_request_id_is_kept_when_sane(api_server: ThreadServer, sent: str, kept: bool) -> None:
    response = httpx.get(f"{api_server.url}/healthz", headers={"x-request-id": sent.encode("utf-8")})
    assert (response.headers["x-request-id"] == sent) is kept
    if not kept:
        assert GENERATED.match(response.headers["x-request-id"])


def test_raw_header_values_are_judged_as_bytes() -> None:
    assert request_id_from([(b"x-request-id", "é".encode())]).startswith("req_")
    assert request_id_from([(b"X-Request-ID", b"ok-1")]) == "ok-1"
    assert request_id_from([]).startswith("req_")


def _json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_json_logs_carry_the_request_id_and_the_caller(tmp_path: Path) -> None:
    server = ProcessServer(tmp_path / "home", env={"TUNEFORGE_LOG_FORMAT": "json", "TUNEFORGE_EXECUTOR": "none"},
                           log_level="info")
    server.start()
    try:
        with server.client() as client:
            assert client.get("/v1/files", headers={"x-request-id": "trace-json-1"}).status_code == 200
            assert client.get("/v1/fine_tuning/jobs/ftjob-nope", headers={"x-request-id": "trace-json-2"}
                              ).status_code == 404
        wait_for("both access log lines", lambda: len([
            e for e in _json_lines(server.log_path) if str(e.get("request_id", "")).startswith("trace-json")]) >= 2,
            timeout=15)
    finally:
        server.stop()
    every = _json_lines(server.log_path)  # raises if any line is not JSON
    lines = [e for e in every if str(e.get("request_id", "")).startswith("trace-json")]
    assert any("tuneforge on http://" in e["message"] for e in every)
    first = next(e for e in lines if e["request_id"] == "trace-json-1")
    assert first["logger"] == "tuneforge.access" and first["level"] == "INFO"
    assert (first["http_method"], first["path"], first["status"]) == ("GET", "/v1/files", 200)
    assert first["organization_id"] == "default" and first["api_key_id"].startswith("key_")
    assert isinstance(first["duration_ms"], float) and "timestamp" in first
    second = next(e for e in lines if e["request_id"] == "trace-json-2")
    assert second["status"] == 404
    assert all(set(e) >= {"timestamp", "level", "logger", "message", "request_id"} for e in every)


def test_plain_logs_carry_the_request_id(tmp_path: Path) -> None:
    server = ProcessServer(tmp_path / "home", env={"TUNEFORGE_EXECUTOR": "none"}, log_level="info")
    server.start()
    try:
        with server.client() as client:
            client.get("/v1/models", headers={"x-request-id": "trace-plain-1"})
        wait_for("the access line", lambda: "[trace-plain-1] GET /v1/models 200" in server.log_path.read_text(),
                 timeout=15)
    finally:
        server.stop()
