"""The PII scan of ``POST /v1/files`` against a real server: report, reject and redact, line numbers in messages,
nothing half-stored on a refusal, stored bytes and counts of the redacted content."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest

from tests.service.helpers import assert_error, chat_row, jsonl, store_snapshot
from tests.support.live_server import ThreadServer

pytestmark = pytest.mark.databases("sqlite")

EMAIL_ROW = {"messages": [{"role": "user", "content": "I am bob.smith@example.com, call me"},
                          {"role": "assistant", "content": "Sure."}]}
CARD_ROW = {"messages": [{"role": "user", "content": "Charge 4111 1111 1111 1111 please"},
                         {"role": "assistant", "content": "Done, key sk-proj-aB3dE5fG7hJ9kL1mN3pQ5rS7"}]}


def _content() -> bytes:
    return jsonl([chat_row(0), EMAIL_ROW, CARD_ROW, chat_row(3)])


def _upload(client: httpx.Client, content: bytes, action: str | None = None, purpose: str = "fine-tune",
            filename: str = "train.jsonl") -> httpx.Response:
    data = {"purpose": purpose, **({"pii_action": action} if action else {})}
    return client.post("/v1/files", data=data, files={"file": (filename, content, "application/jsonl")})


def _findings(body: dict[str, Any]) -> list[tuple[int, str | None, str]]:
    return [(f["line"], f["field"], f["kind"]) for f in body["pii"]["findings"]]


EXPECTED = [(2, "messages[0].content", "email"), (3, "messages[0].content", "credit_card"),
            (3, "messages[1].content", "secret")]


@pytest.mark.databases("sqlite", "postgresql")
def test_report_is_the_default_and_lists_findings_per_line_and_field(client: httpx.Client) -> None:
    content = _content()
    resp = _upload(client, content)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["pii"]["action"] == "report"
    assert _findings(body) == EXPECTED
    assert body["pii"]["counts"] == {"credit_card": 1, "email": 1, "secret": 1}
    assert (body["pii"]["total"], body["pii"]["lines"], body["pii"]["truncated"]) == (3, 2, False)
    assert "bob.smith" not in resp.text, "the file object must not copy the personal data"
    assert client.get(f"/v1/files/{body['id']}/content").content == content
    assert body["bytes"] == len(content) and body["sha256"] == hashlib.sha256(content).hexdigest()
    assert client.get(f"/v1/files/{body['id']}").json()["pii"] == body["pii"]


def test_reject_refuses_the_file_naming_the_first_line_and_kind_and_stores_nothing(
        client: httpx.Client, api_server: ThreadServer) -> None:
    before = store_snapshot(api_server)
    error = assert_error(_upload(client, _content(), "reject"), 400, code="pii_detected", param="file")
    assert "line 2, field 'messages[0].content': an e-mail address" in error["message"]
    assert "3 finding(s) in 2 line(s)" in error["message"]
    assert "bob.smith" not in error["message"]
    assert client.get("/v1/files").json()["data"] == []
    assert store_snapshot(api_server) == before


def test_reject_keeps_a_clean_file(client: httpx.Client) -> None:
    resp = _upload(client, jsonl([chat_row(i) for i in range(3)]), "reject")
    assert resp.status_code == 200, resp.text
    assert resp.json()["pii"] == {"action": "reject", "total": 0, "lines": 0, "counts": {}, "findings": [],
                                  "truncated": False}


def test_redact_stores_the_redacted_bytes_with_their_size_digest_and_counts(client: httpx.Client) -> None:
    original = _content()
    resp = _upload(client, original, "redact")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["pii"]["action"] == "redact" and _findings(body) == EXPECTED
    stored = client.get(f"/v1/files/{body['id']}/content").content
    rows = [json.loads(line) for line in stored.splitlines()]
    assert rows[1]["messages"][0]["content"] == "I am [EMAIL], call me"
    assert rows[2]["messages"][0]["content"] == "Charge [CREDIT_CARD] please"
    assert rows[2]["messages"][1]["content"] == "Done, key [SECRET]"
    assert stored.splitlines()[0] == original.splitlines()[0], "a line without findings is kept byte for byte"
    assert body["bytes"] == len(stored) != len(original)
    assert body["sha256"] == hashlib.sha256(stored).hexdigest()
    # the counts are those of the redacted content: the same bytes uploaded as they are give the same counts
    again = _upload(client, stored).json()
    assert (again["rows"], again["tokens"], again["sha256"]) == (body["rows"], body["tokens"], body["sha256"])
    assert again["pii"]["total"] == 0, "placeholders are not personal data"


def test_redact_works_across_chunk_boundaries_of_a_large_upload(client: httpx.Client) -> None:
    # ~2 MB: many network chunks; PII values are cut by chunk boundaries somewhere
    filler = "lorem ipsum " * 40
    rows = [{"messages": [{"role": "user", "content": f"{filler} mail user{i}@example.org {filler}"},
                          {"role": "assistant", "content": f"ok, from 10.0.{i % 250}.{i % 200 + 1}"}]}
            for i in range(2000)]
    resp = _upload(client, jsonl(rows), "redact")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["pii"]["counts"] == {"email": 2000, "ipv4": 2000}
    assert body["pii"]["truncated"] is True and len(body["pii"]["findings"]) == 100
    stored = client.get(f"/v1/files/{body['id']}/content").content
    assert b"@example.org" not in stored and stored.count(b"[EMAIL]") == 2000
    assert stored.count(b"[IP_ADDRESS]") == 2000 and body["rows"] == 2000


def test_redact_must_come_before_the_file(client: httpx.Client, api_server: ThreadServer) -> None:
    before = store_snapshot(api_server)
    boundary = "xyzzy"
    # ~1 MB: its first bytes reach the server (and would be stored) long before the field after it
    big = _content() + jsonl([chat_row(i) for i in range(10_000)])
    parts = [("file", 'filename="t.jsonl"', big), ("purpose", "", b"fine-tune"),
             ("pii_action", "", b"redact")]
    payload = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{"; " + extra if extra else ""}\r\n\r\n'
        .encode() + value + b"\r\n" for name, extra, value in parts) + f"--{boundary}--\r\n".encode()
    resp = client.post("/v1/files", content=payload,
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    error = assert_error(resp, 400, param="pii_action")
    assert "before 'file'" in error["message"]
    assert client.get("/v1/files").json()["data"] == []
    assert store_snapshot(api_server) == before


def test_an_unknown_action_is_400(client: httpx.Client, api_server: ThreadServer) -> None:
    before = store_snapshot(api_server)
    error = assert_error(_upload(client, _content(), "scrub"), 400, param="pii_action")
    assert "'scrub'" in error["message"] and "report, reject, redact" in error["message"]
    assert store_snapshot(api_server) == before


def test_an_invalid_line_is_still_reported_by_the_validator_when_redacting(client: httpx.Client,
                                                                          api_server: ThreadServer) -> None:
    before = store_snapshot(api_server)
    content = _content() + b'{"messages": "mail bob@example.com"}\n'
    error = assert_error(_upload(client, content, "redact"), 400, code="invalid_file_format", param="file")
    assert "line 5" in error["message"]
    assert store_snapshot(api_server) == before


def test_evals_files_are_scanned_too(client: httpx.Client) -> None:
    content = jsonl([{"item": {"question": "Who is at 203.0.113.7?", "answer": "nobody"}}])
    resp = _upload(client, content, "report", purpose="evals")
    assert resp.status_code == 200, resp.text
    assert _findings(resp.json()) == [(1, "item.question", "ipv4")]


@pytest.mark.limits(max_upload_bytes=4096)
def test_redaction_does_not_lift_the_upload_limit(client: httpx.Client, api_server: ThreadServer) -> None:
    before = store_snapshot(api_server)
    content = jsonl([EMAIL_ROW] * 100)
    assert_error(_upload(client, content, "redact"), 413, code="file_too_large")
    assert store_snapshot(api_server) == before
