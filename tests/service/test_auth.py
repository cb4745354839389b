"""Bearer API keys: every route but health needs one; failures are 401 in OpenAI's error shape."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest

from tests.service.helpers import assert_error, chat_file
from tests.support.live_server import ThreadServer, make_settings
from tests.support.waiting import free_port

PROTECTED = [
    ("GET", "/v1/files"),
    ("POST", "/v1/files"),
    ("GET", "/v1/files/file-abc"),
    ("GET", "/v1/files/file-abc/content"),
    ("DELETE", "/v1/files/file-abc"),
    ("GET", "/v1/fine_tuning/jobs"),
    ("POST", "/v1/fine_tuning/jobs"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-abc"),
    ("POST", "/v1/fine_tuning/jobs/ftjob-abc/cancel"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-abc/events"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-abc/checkpoints"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-abc/artifacts"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/SmolLM2-135M-Instruct"),
]

BAD_HEADERS = {
    "missing": None,
    "wrong key": "Bearer tf-this-key-does-not-exist-0123456789",
    "basic scheme": "Basic dXNlcjpwYXNz",
    "bearer without key": "Bearer",
    "unknown scheme": "Token tf-abc",
}


def _request(server: ThreadServer, method: str, path: str, authorization: str | None) -> httpx.Response:
    headers = {} if authorization is None else {"Authorization": authorization}
    kwargs: dict[str, object] = {}
    if method == "POST" and path == "/v1/files":
        kwargs = {"files": {"file": ("x.jsonl", chat_file(), "application/jsonl")}, "data": {"purpose": "fine-tune"}}
    elif method == "POST" and path == "/v1/fine_tuning/jobs":
        kwargs = {"json": {"model": "SmolLM2-135M-Instruct", "training_file": "file-abc"}}
    return httpx.request(method, server.url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("header_kind", list(BAD_HEADERS))
def test_every_protected_route_rejects_bad_credentials(api_server: ThreadServer, header_kind: str) -> None:
    for method, path in PROTECTED:
        resp = _request(api_server, method, path, BAD_HEADERS[header_kind])
        error = assert_error(resp, 401, code="invalid_api_key")
        assert error["type"] == "invalid_request_error"
        assert error["param"] is None
        assert resp.headers.get("www-authenticate") == "Bearer", (method, path)


def test_messages_say_what_is_wrong(api_server: ThreadServer) -> None:
    missing = assert_error(_request(api_server, "GET", "/v1/files", None), 401)
    assert "didn't provide an API key" in missing["message"]
    malformed = assert_error(_request(api_server, "GET", "/v1/files", "Basic dXNlcjpwYXNz"), 401)
    assert "Malformed Authorization header" in malformed["message"]
    wrong_key = "tf-this-key-does-not-exist-0123456789"
    wrong = assert_error(_request(api_server, "GET", "/v1/files", f"Bearer {wrong_key}"), 401)
    assert "Incorrect API key" in wrong["message"]
    assert wrong_key not in wrong["message"], "the full key must never be echoed back"


def test_no_file_is_stored_without_a_key(api_server: ThreadServer) -> None:
    _request(api_server, "POST", "/v1/files", None)
    _request(api_server, "POST", "/v1/files", "Bearer wrong-key-0123456789")
    with api_server.client() as client:
        assert client.get("/v1/files").json()["data"] == []


def test_auth_is_checked_before_the_request_body(api_server: ThreadServer) -> None:
    resp = httpx.post(f"{api_server.url}/v1/fine_tuning/jobs", json={"nonsense": True})
    assert_error(resp, 401, code="invalid_api_key")


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_needs_no_key(api_server: ThreadServer, path: str) -> None:
    resp = httpx.get(api_server.url + path)
    assert resp.status_code == 200
    assert resp.json()["status"] in ("ok", "ready")


def test_the_right_key_works_with_any_scheme_case(api_server: ThreadServer) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):
        resp = httpx.get(f"{api_server.url}/v1/models", headers={"Authorization": f"{scheme} {api_server.api_key}"})
        assert resp.status_code == 200, (scheme, resp.text)


def test_first_start_writes_a_private_key_file(api_server: ThreadServer) -> None:
    key_file = api_server.settings.key_file
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert api_server.api_key.startswith("tf-")


def test_configured_key_is_accepted_and_no_key_file_is_written(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", free_port(), api_key="tf-configured-key-for-this-test")
    server = ThreadServer(settings, start_executor=False).start()
    try:
        assert not settings.key_file.exists()
        with server.client("tf-configured-key-for-this-test") as client:
            assert client.get("/v1/files").status_code == 200
        assert_error(_request(server, "GET", "/v1/files", "Bearer tf-some-other-key-000000"), 401)
    finally:
        server.stop()
