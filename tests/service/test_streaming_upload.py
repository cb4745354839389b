"""Uploads stream into the store while they are validated: nothing invalid is ever published."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.live_server import ThreadServer
from tuneforge.service.domain.streaming_upload import Pipe, UploadAborted, end_of_lines, iter_lines, line_queue


def _reader(pipe: Pipe, out: dict[str, object]) -> threading.Thread:
    def run() -> None:
        data = b""
        try:
            while chunk := pipe.read(5):
                data += chunk
            out["data"] = data
        except UploadAborted as exc:
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_pipe_delivers_everything_only_after_commit() -> None:
    pipe, out = Pipe(max_chunks=2), {}
    thread = _reader(pipe, out)
    for part in (b"abc", b"defgh", b"ij"):
        pipe.write(part)
    pipe.end()
    thread.join(0.3)
    assert thread.is_alive(), "the reader must wait for the decision at the end of the data"
    pipe.commit()
    thread.join(5)
    assert out == {"data": b"abcdefghij"}


def test_pipe_abort_raises_in_the_reader() -> None:
    pipe, out = Pipe(), {}
    thread = _reader(pipe, out)
    pipe.write(b"partial data")
    pipe.end()
    pipe.abort()
    thread.join(5)
    assert isinstance(out.get("error"), UploadAborted)


def test_lines_are_reassembled_across_chunks() -> None:
    chunks = line_queue()
    for part in (b'{"a": 1}\n{"b"', b': 2}\n', b'{"c": 3}'):
        chunks.put(part)
    end_of_lines(chunks)
    assert list(iter_lines(chunks)) == [b'{"a": 1}\n', b'{"b": 2}\n', b'{"c": 3}']


@pytest.mark.parametrize("rows", [20_000])
def test_large_upload_with_a_bad_last_line_stores_nothing(api_server: ThreadServer, rows: int) -> None:
    line = json.dumps({"messages": [{"role": "user", "content": "hi " * 20},
                                    {"role": "assistant", "content": "hello " * 20}]}) + "\n"
    body = (line * rows + '{"messages": [}\n').encode()
    store = api_server.state.store
    before = sorted(info.key for info in store.list(""))
    response = api_server.client().post("/v1/files", files={"file": ("big.jsonl", body)},
                                        data={"purpose": "fine-tune"})
    assert response.status_code == 400, response.text
    assert [d["line"] for d in response.json()["error"]["details"]] == [rows + 1]
    assert sorted(info.key for info in store.list("")) == before
    ok = api_server.client().post("/v1/files", files={"file": ("big.jsonl", (line * rows).encode())})
    assert ok.status_code == 200 and ok.json()["rows"] == rows and ok.json()["bytes"] == len(line) * rows
    assert store.stat(f"files/{ok.json()['id']}").size == len(line) * rows


# -- the multipart body, parsed as it streams (streaming-form-data) --

BOUNDARY = "tuneforge-test-boundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
GOOD = (json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
        + "\n").encode()


def _part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


def _body(*parts: bytes, close: bool = True) -> bytes:
    return b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def _post_raw(server: ThreadServer, body: Any, content_type: str = CONTENT_TYPE) -> httpx.Response:
    with server.client() as client:
        return client.post("/v1/files", content=body, headers={"Content-Type": content_type})


def _stored(server: ThreadServer) -> list[str]:
    return sorted(info.key for info in server.state.store.list(""))


@pytest.mark.parametrize(("case", "body", "param", "says"), [
    ("two-file-parts", _body(_part("file", GOOD, "a.jsonl"), _part("file", GOOD, "b.jsonl")), "file",
     "more than one 'file' part"),
    ("truncated", _body(_part("purpose", b"fine-tune"), _part("file", GOOD * 3, "a.jsonl")[:-20], close=False),
     "file", "ended inside the 'file' part"),
    ("no-file-part", _body(_part("purpose", b"fine-tune")), "file", "no 'file' part"),
    ("long-purpose", _body(_part("purpose", b"x" * 5000), _part("file", GOOD, "a.jsonl")), "purpose",
     "longer than 4096 bytes"),
    ("empty-purpose", _body(_part("purpose", b""), _part("file", GOOD, "a.jsonl")), "purpose",
     "Invalid purpose ''"),
    ("long-filename", _body(_part("file", GOOD, "f" * 600 + ".jsonl")), "file", "longer than 512 characters"),
    ("garbage", b"this is not a multipart body at all\r\n\r\n" * 3, "file", "Malformed multipart"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 20 else "")
def test_malformed_forms_are_400_and_store_nothing(api_server: ThreadServer, case: str, body: bytes, param: str,
                                                   says: str) -> None:
    before = _stored(api_server)
    response = _post_raw(api_server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error
    assert _stored(api_server) == before
    with api_server.client() as client:
        assert client.get("/v1/files").json()["data"] == []


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data", "multipart/mixed; boundary=x",
                                          ""])
def test_other_content_types_are_400(api_server: ThreadServer, content_type: str) -> None:
    response = _post_raw(api_server, _body(_part("file", GOOD, "a.jsonl")), content_type)
    assert response.status_code == 400 and response.json()["error"]["param"] == "file", response.text
    assert "multipart/form-data" in response.json()["error"]["message"]


def test_parts_split_anywhere_and_unknown_fields_are_ignored(api_server: ThreadServer) -> None:
    """Boundaries, headers and lines cut across chunks of a few bytes; fields besides file/purpose ignored."""
    content = GOOD * 7 + b"\n" + GOOD.rstrip(b"\n")  # a blank line and no final newline: stored byte for byte
    body = _body(_part("note", b"ignored " * 100), _part("file", content, "\u00e9t\u00e9.jsonl"),
                 _part("purpose", b"fine-tune"))

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start:start + 7]

    response = _post_raw(api_server, chunks())
    assert response.status_code == 200, response.text
    file = response.json()
    assert (file["rows"], file["bytes"], file["filename"]) == (8, len(content), "\u00e9t\u00e9.jsonl")
    assert file["sha256"] == hashlib.sha256(content).hexdigest()
    with api_server.client() as client:
        assert client.get(f"/v1/files/{file['id']}/content").content == content


def test_an_upload_holds_no_database_connection_while_its_body_streams(api_server: ThreadServer) -> None:
    engine = api_server.state.engine
    head = f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.jsonl\"\r\n\r\n".encode()
    sent_half = threading.Event()
    go_on = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield head + GOOD * 50
        sent_half.set()
        go_on.wait(30)
        yield GOOD * 50 + f"\r\n--{BOUNDARY}--\r\n".encode()

    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: result.update(response=_post_raw(api_server, slow_body())))
    thread.start()
    try:
        assert sent_half.wait(30)
        time.sleep(0.5)  # the server has authenticated the request and is reading its body
        assert engine.pool.checkedout() == 0
    finally:
        go_on.set()
        thread.join(30)
    assert result["response"].status_code == 200, result["response"].text
    assert result["response"].json()["rows"] == 100
