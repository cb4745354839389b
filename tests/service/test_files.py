"""``/v1/files``: upload, list with cursor pagination, get, content, delete."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from tests.service.helpers import (
    assert_error,
    chat_file,
    jsonl,
    pc_row,
    pref_row,
    store_snapshot,
    upload,
    upload_raw,
)
from tests.support.live_server import ThreadServer

FILE_FIELDS = {"id", "object", "bytes", "created_at", "filename", "purpose", "status", "status_details"}


def test_upload_chat_file(client: httpx.Client, api_server: ThreadServer) -> None:
    content = chat_file(4)
    body = upload(client, content, "chat.jsonl")
    assert set(body) >= FILE_FIELDS
    assert body["id"].startswith("file-")
    assert body["object"] == "file"
    assert body["purpose"] == "fine-tune"
    assert body["filename"] == "chat.jsonl"
    assert body["status"] == "processed"
    assert body["format"] == "chat"
    assert body["rows"] == 4
    assert body["tokens"] > 0
    assert body["bytes"] == len(content)
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert f"files/{body['id']}" in store_snapshot(api_server)


def test_upload_prompt_completion_file(client: httpx.Client) -> None:
    content = jsonl([pc_row(i) for i in range(5)])
    body = upload(client, content, "pc.jsonl")
    assert (body["format"], body["rows"], body["bytes"]) == ("prompt_completion", 5, len(content))
    assert body["sha256"] == hashlib.sha256(content).hexdigest()


def test_upload_preference_file(client: httpx.Client) -> None:
    body = upload(client, jsonl([pref_row(i) for i in range(2)]), "pref.jsonl")
    assert (body["format"], body["rows"]) == ("preference", 2)


def test_chat_file_with_weights_and_text_parts_is_accepted(client: httpx.Client) -> None:
    row = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}]},
        {"role": "assistant", "content": "Hello", "weight": 0},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Hello again", "weight": 1},
    ]}
    body = upload(client, jsonl([row]))
    assert (body["format"], body["rows"]) == ("chat", 1)


def test_blank_lines_are_ignored(client: httpx.Client) -> None:
    content = b"\n" + chat_file(2) + b"\n\n"
    body = upload(client, content)
    assert body["rows"] == 2
    assert body["bytes"] == len(content)


def test_get_file(client: httpx.Client) -> None:
    uploaded = upload(client, chat_file(), "a.jsonl")
    resp = client.get(f"/v1/files/{uploaded['id']}")
    assert resp.status_code == 200
    assert resp.json() == uploaded


@pytest.mark.parametrize("content", [
    chat_file(3),
    # CRLF endings, non-ASCII text and no final newline: stored and served byte for byte
    ('{"messages": [{"role": "user", "content": "Grüß dich, 東京"}, '
     '{"role": "assistant", "content": "Hallo 👋"}]}\r\n'
     '{"prompt": "ignored", "messages": [{"role": "user", "content": "x"}, '
     '{"role": "assistant", "content": "y"}]}').encode(),
], ids=["plain", "crlf-unicode-no-final-newline"])
def test_content_round_trip_is_byte_identical(client: httpx.Client, content: bytes) -> None:
    uploaded = upload(client, content, "round.jsonl")
    resp = client.get(f"/v1/files/{uploaded['id']}/content")
    assert resp.status_code == 200
    assert resp.content == content
    assert int(resp.headers["content-length"]) == len(content)
    assert "round.jsonl" in resp.headers.get("content-disposition", "")
    assert hashlib.sha256(resp.content).hexdigest() == uploaded["sha256"]


def test_list_newest_first_with_cursor_pagination(client: httpx.Client) -> None:
    empty = client.get("/v1/files").json()
    assert empty == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}
    ids = [upload(client, chat_file(i + 1), f"f{i}.jsonl")["id"] for i in range(5)]
    newest_first = ids[::-1]

    everything = client.get("/v1/files").json()
    assert [f["id"] for f in everything["data"]] == newest_first
    assert everything["has_more"] is False

    seen: list[str] = []
    after = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if after:
            params["after"] = after
        page = client.get("/v1/files", params=params).json()
        pages += 1
        assert page["object"] == "list"
        assert page["first_id"] == page["data"][0]["id"]
        assert page["last_id"] == page["data"][-1]["id"]
        seen += [f["id"] for f in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == newest_first
    assert pages == 3

    last_page = client.get("/v1/files", params={"after": ids[0]}).json()
    assert last_page["data"] == [] and last_page["has_more"] is False


def test_list_filters_by_purpose(client: httpx.Client) -> None:
    upload(client, chat_file())
    assert len(client.get("/v1/files", params={"purpose": "fine-tune"}).json()["data"]) == 1
    assert client.get("/v1/files", params={"purpose": "assistants"}).json()["data"] == []


@pytest.mark.parametrize("limit", [0, 101, "x"])
def test_bad_limit_is_400(client: httpx.Client, limit: object) -> None:
    assert_error(client.get("/v1/files", params={"limit": limit}), 400, param="limit")


def test_delete_then_everything_is_404(client: httpx.Client, api_server: ThreadServer) -> None:
    keep = upload(client, chat_file(2), "keep.jsonl")
    gone = upload(client, chat_file(3), "gone.jsonl")
    resp = client.delete(f"/v1/files/{gone['id']}")
    assert resp.status_code == 200
    assert resp.json() == {"id": gone["id"], "object": "file", "deleted": True}

    for method, path in [("GET", f"/v1/files/{gone['id']}"), ("GET", f"/v1/files/{gone['id']}/content"),
                         ("DELETE", f"/v1/files/{gone['id']}")]:
        assert_error(client.request(method, path), 404, code="file_not_found")
    assert [f["id"] for f in client.get("/v1/files").json()["data"]] == [keep["id"]]
    objects = store_snapshot(api_server)
    assert f"files/{gone['id']}" not in objects
    assert f"files/{keep['id']}" in objects
    assert client.get(f"/v1/files/{keep['id']}/content").content == chat_file(2)


@pytest.mark.parametrize("method,suffix", [("GET", ""), ("GET", "/content"), ("DELETE", "")])
def test_unknown_file_is_404(client: httpx.Client, method: str, suffix: str) -> None:
    error = assert_error(client.request(method, f"/v1/files/file-doesnotexist{suffix}"), 404, code="file_not_found")
    assert "file-doesnotexist" in error["message"]
    assert error["type"] == "invalid_request_error"


def test_bad_purpose_is_400(client: httpx.Client, api_server: ThreadServer) -> None:
    before = store_snapshot(api_server)
    error = assert_error(upload_raw(client, chat_file(), purpose="assistants"), 400, param="purpose")
    assert "assistants" in error["message"] and "fine-tune" in error["message"]
    assert client.get("/v1/files").json()["data"] == []
    assert store_snapshot(api_server) == before


def test_upload_without_file_field_is_400(client: httpx.Client) -> None:
    resp = client.post("/v1/files", data={"purpose": "fine-tune"})
    assert_error(resp, 400, param="file")


@pytest.mark.limits(max_upload_bytes=300)
def test_upload_over_the_size_limit_is_413_and_stores_nothing(client: httpx.Client,
                                                              api_server: ThreadServer) -> None:
    before = store_snapshot(api_server)
    error = assert_error(upload_raw(client, chat_file(20)), 413, code="file_too_large", param="file")
    assert "300" in error["message"]
    assert client.get("/v1/files").json()["data"] == []
    assert store_snapshot(api_server) == before


def test_unknown_route_is_404_in_error_shape(client: httpx.Client) -> None:
    assert_error(client.get("/v1/nothing-here"), 404)
    assert_error(client.put("/v1/files"), 405)


def test_openapi_schema_lists_the_routes(client: httpx.Client) -> None:
    paths = json.loads(client.get("/openapi.json").text)["paths"]
    for path in ("/v1/files", "/v1/files/{file_id}", "/v1/files/{file_id}/content", "/v1/fine_tuning/jobs",
                 "/v1/fine_tuning/jobs/{job_id}/cancel", "/v1/fine_tuning/jobs/{job_id}/events",
                 "/v1/fine_tuning/jobs/{job_id}/checkpoints", "/v1/fine_tuning/jobs/{job_id}/artifacts",
                 "/v1/models"):
        assert path in paths, path
