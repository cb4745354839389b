"""The prompts of a safety report: the fixed red-team requests (``redteam_prompts.json``, with its provenance)
and the first prompts of a job's validation file (else its training file), as chat messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from importlib import resources
from typing import IO, Any

from tuneforge.storage import ObjectStore

Messages = list[dict[str, str]]
#: a file is read this far at most for its prompts
MAX_PROMPT_BYTES = 16 << 20


@lru_cache(maxsize=1)
def redteam_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resources.files(__package__).joinpath("redteam_prompts.json").read_text("utf-8"))
    return data


def redteam_prompts(count: int) -> list[str]:
    prompts: list[str] = redteam_data()["prompts"]
    return prompts[:count]


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        parts = [str(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(parts) if parts else None
    return None


def _chat(messages: Any) -> Messages | None:
    if not isinstance(messages, list):
        return None
    out = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant"):
            return None
        text = _text(message.get("content"))
        if text is None:
            return None
        out.append({"role": "system" if message["role"] == "developer" else message["role"], "content": text})
    return out


def prompt_of(row: Any) -> Messages | None:
    """What the model is asked in a training row: the conversation before its last assistant turn (chat), the
    preference input, or the prompt (prompt/completion, reinforcement). None when the row has no user turn."""
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        messages = _chat(row["messages"])
        if messages:
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
            messages = messages[:last]
    elif isinstance(row.get("input"), dict):
        messages = _chat(row["input"].get("messages"))
    elif isinstance(row.get("prompt"), str):
        messages = [{"role": "user", "content": row["prompt"]}]
    else:
        messages = _chat(row.get("prompt"))
    if not messages or not any(m["role"] == "user" for m in messages):
        return None
    return messages


def read_lines(stream: IO[bytes], max_bytes: int) -> Iterator[bytes]:
    pending, read = b"", 0
    with stream:
        while read < max_bytes and (chunk := stream.read(1 << 20)):
            read += len(chunk)
            *lines, pending = (pending + chunk).split(b"\n")
            yield from lines
    if pending and read < max_bytes:
        yield pending


def file_prompts(store: ObjectStore, key: str, count: int) -> list[Messages]:
    prompts: list[Messages] = []
    if count <= 0:
        return prompts
    for line in read_lines(store.open(key), MAX_PROMPT_BYTES):
        try:
            messages = prompt_of(json.loads(line))
        except ValueError:
            continue
        if messages is not None:
            prompts.append(messages)
            if len(prompts) >= count:
                break
    return prompts
