"""Malformed training files: a 400 ``invalid_file_format`` that names every bad line and why, and nothing stored."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.service.helpers import assert_error, chat_row, pc_row, pref_row, store_snapshot, upload, upload_raw
from tests.support.live_server import ThreadServer


def line(obj: Any) -> bytes:
    return obj if isinstance(obj, bytes) else json.dumps(obj).encode()


def u(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def a(content: Any, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, **extra}


@dataclass
class Case:
    id: str
    lines: list[Any]
    #: (line number, substring of the reason) for every expected error, in order
    errors: list[tuple[int, str]]
    field: str | None = None
    limits: dict[str, int] = dataclasses.field(default_factory=dict)

    def content(self) -> bytes:
        return b"".join(line(x) + b"\n" for x in self.lines)


GOOD = [chat_row(0), chat_row(1)]
GOOD_PC = [pc_row(1), pc_row(2)]
GOOD_PREF = [pref_row(0), pref_row(1)]

CASES = [
    Case("not-json", [*GOOD, b'{"messages": [{"role": "user"'], [(3, "not valid JSON")]),
    Case("trailing-garbage", [chat_row(0), b'{"messages": []} extra', chat_row(1)], [(2, "not valid JSON")]),
    Case("not-an-object", [chat_row(0), [1, 2, 3], chat_row(1)], [(2, "expected a JSON object, got list")]),
    Case("string-line", [*GOOD, "just text"], [(3, "expected a JSON object, got str")]),
    Case("missing-messages", [*GOOD, {"conversation": [u("hi"), a("yo")]}], [(3, "unrecognised example")]),
    Case("messages-not-a-list", [*GOOD, {"messages": "hello"}], [(3, "must be a list of messages")],
         field="messages"),
    Case("empty-messages", [*GOOD, {"messages": []}], [(3, "'messages' is empty")], field="messages"),
    Case("message-not-an-object", [*GOOD, {"messages": ["hi", a("yo")]}],
         [(3, "each message must be an object")], field="messages[0]"),
    Case("unknown-role", [chat_row(0), {"messages": [{"role": "robot", "content": "beep"}, a("ok")]}, chat_row(1)],
         [(2, "unknown role 'robot'")], field="messages[0].role"),
    Case("missing-role", [*GOOD, {"messages": [{"content": "hi"}, a("ok")]}], [(3, "message has no 'role'")],
         field="messages[0].role"),
    Case("missing-content", [*GOOD, {"messages": [{"role": "user"}, a("ok")]}],
         [(3, "message has no text 'content'")], field="messages[0].content"),
    Case("empty-content", [*GOOD, {"messages": [u(""), a("ok")]}], [(3, "message content is empty")],
         field="messages[0].content"),
    Case("whitespace-content", [*GOOD, {"messages": [u("hi"), a("  \n\t ")]}], [(3, "message content is empty")],
         field="messages[1].content"),
    Case("no-assistant-turn", [*GOOD, {"messages": [{"role": "system", "content": "s"}, u("hi")]}],
         [(3, "no assistant message")], field="messages"),
    Case("last-message-not-assistant", [*GOOD, {"messages": [u("hi"), a("yo"), u("bye")]}],
         [(3, "the last message must be from the assistant")], field="messages"),
    Case("weight-on-user-turn", [*GOOD, {"messages": [{**u("hi"), "weight": 1}, a("yo")]}],
         [(3, "'weight' is only allowed on assistant messages")], field="messages[0].weight"),
    Case("weight-2", [*GOOD, {"messages": [u("hi"), a("yo", weight=2)]}], [(3, "'weight' must be 0 or 1")],
         field="messages[1].weight"),
    Case("weight-true", [*GOOD, {"messages": [u("hi"), a("yo", weight=True)]}], [(3, "'weight' must be 0 or 1")],
         field="messages[1].weight"),
    Case("all-assistant-weights-0", [*GOOD, {"messages": [u("hi"), a("yo", weight=0), u("?"), a("!", weight=0)]}],
         [(3, "every assistant message has weight 0")], field="messages"),
    Case("non-text-content-part",
         [*GOOD, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                               a("a cat")]}],
         [(3, "only text content parts are supported")], field="messages[0].content"),
    Case("prompt-without-completion", [*GOOD_PC, {"prompt": "Count to 3:"}], [(3, "missing 'completion'")],
         field="completion"),
    Case("empty-completion", [*GOOD_PC, {"prompt": "Count to 3:", "completion": ""}],
         [(3, "'completion' is empty")], field="completion"),
    Case("non-string-prompt", [*GOOD_PC, {"prompt": 42, "completion": "43"}], [(3, "'prompt' must be a string")],
         field="prompt"),
    Case("null-completion", [*GOOD_PC, {"prompt": "p", "completion": None}], [(3, "missing 'completion'")],
         field="completion"),
    Case("prompt-only-line-in-chat-file", [*GOOD, {"prompt": "fine"}],  # a KeyError (500) before
         [(3, "this line is a prompt-only example, but the file holds chat")]),
    Case("mixed-formats", [*GOOD, pc_row(3)],
         [(3, "this line is a prompt/completion example, but the file holds chat")]),
    Case("invalid-utf8", [chat_row(0), b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', chat_row(1)],
         [(2, "not valid UTF-8")]),
    Case("over-token-limit", [chat_row(0), {"messages": [u("word " * 400), a("ok")]}, chat_row(1)],
         [(2, "over the limit of 64")], limits={"max_example_tokens": 64}),
    Case("preference-identical", [*GOOD_PREF, {"prompt": "p", "chosen": "same", "rejected": "same"}],
         [(3, "'chosen' and 'rejected' are identical")], field="rejected"),
    Case("preference-missing-rejected", [*GOOD_PREF, {"prompt": "p", "chosen": "good"}],
         [(3, "missing 'rejected'")], field="rejected"),
    Case("preference-input-not-object",
         [*GOOD_PREF, {"input": "hi", "preferred_output": [a("x")], "non_preferred_output": [a("y")]}],
         [(3, "'input' must be an object")], field="input"),
    Case("preference-output-without-assistant",
         [*GOOD_PREF, {"input": {"messages": [u("hi")]}, "preferred_output": [u("x")],
                       "non_preferred_output": [a("y")]}],
         [(3, "no assistant message")], field="preferred_output"),
    Case("several-bad-lines",
         [chat_row(0), b"nope", chat_row(1), {"messages": [u("hi")]}, chat_row(2),
          {"messages": [{"role": "bot", "content": "x"}, a("y")]}, chat_row(3)],
         [(2, "not valid JSON"), (4, "no assistant message"), (6, "unknown role 'bot'")]),
    Case("blank-lines-keep-numbering", [chat_row(0), b"", b"   ", {"messages": [u("hi"), a("")]}],
         [(4, "message content is empty")], field="messages[1].content"),
]


def _listing(client: httpx.Client) -> list[str]:
    return [f["id"] for f in client.get("/v1/files").json()["data"]]


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.id, marks=[pytest.mark.limits(**c.limits)] if c.limits else []) for c in CASES])
def test_malformed_file_is_rejected_with_line_and_reason(client: httpx.Client, api_server: ThreadServer,
                                                         case: Case) -> None:
    kept = upload(client, jsonl_good(), "kept.jsonl")["id"]  # an existing file must stay untouched
    files_before, objects_before = _listing(client), store_snapshot(api_server)

    error = assert_error(upload_raw(client, case.content(), "bad.jsonl"), 400, code="invalid_file_format",
                         param="file")
    details = error["details"]
    assert len(details) == len(case.errors), details
    for (lineno, reason), detail in zip(case.errors, details, strict=True):
        assert detail["line"] == lineno, detail
        assert reason in detail["message"], detail
        assert f"line {lineno}" in error["message"]
        assert reason in error["message"]
    if case.field is not None:
        assert details[0]["field"] == case.field, details
    assert "bad.jsonl" in error["message"]

    assert _listing(client) == files_before == [kept]
    assert store_snapshot(api_server) == objects_before


def jsonl_good() -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in GOOD)


@pytest.mark.parametrize("content", [b"", b"\n\n   \n"], ids=["empty", "only-blank-lines"])
def test_file_without_examples_is_rejected(client: httpx.Client, api_server: ThreadServer, content: bytes) -> None:
    before = store_snapshot(api_server)
    error = assert_error(upload_raw(client, content, "empty.jsonl"), 400, code="invalid_file_format")
    assert "no examples" in error["message"]
    assert [d["message"] for d in error["details"]] == ["the file contains no examples"]
    assert _listing(client) == []
    assert store_snapshot(api_server) == before


@pytest.mark.limits(max_reported_errors=7)
def test_error_list_is_capped(client: httpx.Client, api_server: ThreadServer) -> None:
    before = store_snapshot(api_server)
    content = jsonl_good() + b"".join(b"not json\n" for _ in range(30))
    error = assert_error(upload_raw(client, content, "many.jsonl"), 400, code="invalid_file_format")
    details = error["details"]
    assert [d["line"] for d in details] == list(range(3, 10))
    assert all("not valid JSON" in d["message"] for d in details)
    # the message shows the first few, and says there were more than it lists
    assert "7+ problem(s)" in error["message"]
    assert "line 3" in error["message"] and "more" in error["message"]
    assert _listing(client) == []
    assert store_snapshot(api_server) == before


def test_default_cap_reports_at_most_50(client: httpx.Client) -> None:
    content = b"".join(b"[]\n" for _ in range(80)) + jsonl_good()
    error = assert_error(upload_raw(client, content), 400, code="invalid_file_format")
    assert len(error["details"]) == 50
    assert error["details"][-1]["line"] == 50


def test_valid_lines_after_a_bad_one_do_not_make_it_valid(client: httpx.Client) -> None:
    content = b"{bad\n" + b"".join(json.dumps(chat_row(i)).encode() + b"\n" for i in range(200))
    error = assert_error(upload_raw(client, content), 400, code="invalid_file_format")
    assert [d["line"] for d in error["details"]] == [1]


@pytest.mark.limits(max_example_tokens=64)
def test_under_the_token_limit_is_accepted(client: httpx.Client, api_server: ThreadServer) -> None:
    body = upload(client, jsonl_good())
    assert body["rows"] == 2
