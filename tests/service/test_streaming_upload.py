"""Uploads stream into the store while they are validated: nothing invalid is ever published."""

from __future__ import annotations

import json
import threading

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
