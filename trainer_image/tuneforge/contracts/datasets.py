"""Training-data line formats: detection, validation with line-numbered errors, normalisation.

Pure Python so that the service validates uploads and the trainer reads data with the same rules.

Canonical (normalised) rows:

- ``chat``: ``{"messages": [{"role", "content", "weight"?}, ...]}``
- ``prompt_completion``: ``{"prompt": str, "completion": str}``
- ``preference``: ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}``
  (from OpenAI's ``input``/``preferred_output``/``non_preferred_output``, from ``prompt/chosen/rejected``,
  or from whole HH-RLHF dialogues that share their prompt)
- ``prompt_only``: ``{"prompt": [messages], **reference fields}`` for reinforcement
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "developer", "user", "assistant", "tool")
FORMATS = ("chat", "prompt_completion", "preference", "prompt_only")

#: which line formats each ``method.type`` trains on
METHOD_FORMATS: dict[str, tuple[str, ...]] = {
    "supervised": ("chat", "prompt_completion"),
    "dpo": ("preference",),
    "reward_model": ("preference",),
    "reinforcement": ("prompt_only",),
}

DEFAULT_MAX_ERRORS = 50

FORMAT_LABELS = {
    "chat": "chat ('messages')",
    "prompt_completion": "prompt/completion",
    "preference": "preference",
    "prompt_only": "prompt-only",
}


class InvalidLine(ValueError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class LineError:
    line: int
    message: str
    field: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", field '{self.field}'" if self.field else "")
        return f"{where}: {self.message}"


@dataclass
class ValidationReport:
    format: str | None = None
    rows: int = 0
    tokens: int = 0
    max_example_tokens: int = 0
    errors: list[LineError] = field(default_factory=list)
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and self.rows > 0


# -- detection and normalisation of one decoded JSON object --


def detect_format(obj: Any) -> str:
    if not isinstance(obj, dict):
        raise InvalidLine(f"expected a JSON object, got {type(obj).__name__}")
    if "preferred_output" in obj or "non_preferred_output" in obj or "input" in obj:
        return "preference"
    if "chosen" in obj or "rejected" in obj:
        return "preference"
    if "messages" in obj:
        msgs = obj["messages"]
        has_assistant = isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and (
            msgs[-1].get("role") == "assistant"
        )
        return "chat" if has_assistant else "prompt_only"
    if "completion" in obj:
        return "prompt_completion"
    if "prompt" in obj:
        return "prompt_only"
    raise InvalidLine(
        "unrecognised example: expected 'messages' (chat), 'prompt'+'completion', "
        "'input'+'preferred_output'+'non_preferred_output' or 'prompt'+'chosen'+'rejected' (preference), "
        f"or 'prompt' (reinforcement); found keys {sorted(obj)[:8]}"
    )


def _check_messages(msgs: Any, where: str, need_assistant: bool) -> list[dict[str, Any]]:
    if not isinstance(msgs, list):
        raise InvalidLine(f"'{where}' must be a list of messages", where)
    if not msgs:
        raise InvalidLine(f"'{where}' is empty", where)
    out = []
    for i, msg in enumerate(msgs):
        path = f"{where}[{i}]"
        if not isinstance(msg, dict):
            raise InvalidLine("each message must be an object with 'role' and 'content'", path)
        role = msg.get("role")
        if role is None:
            raise InvalidLine("message has no 'role'", f"{path}.role")
        if role not in ROLES:
            raise InvalidLine(f"unknown role {role!r}; expected one of {', '.join(ROLES)}", f"{path}.role")
        content = msg.get("content")
        if role == "assistant" and content is None and msg.get("tool_calls"):
            out.append(dict(msg))
            continue
        if isinstance(content, list):
            # OpenAI content parts: keep text parts only
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(texts) != len(content):
                raise InvalidLine("only text content parts are supported", f"{path}.content")
            content = "".join(t for t in texts if isinstance(t, str))
        if not isinstance(content, str):
            raise InvalidLine("message has no text 'content'", f"{path}.content")
        if not content.strip():
            raise InvalidLine("message content is empty", f"{path}.content")
        if "weight" in msg:
            if role != "assistant":
                raise InvalidLine("'weight' is only allowed on assistant messages", f"{path}.weight")
            if msg["weight"] not in (0, 1) or isinstance(msg["weight"], bool):
                raise InvalidLine("'weight' must be 0 or 1", f"{path}.weight")
        clean = {"role": role, "content": content}
        if "weight" in msg:
            clean["weight"] = msg["weight"]
        out.append(clean)
    if need_assistant:
        if not any(m["role"] == "assistant" for m in out):
            raise InvalidLine("no assistant message to learn from", where)
        if all(m.get("weight", 1) == 0 for m in out if m["role"] == "assistant"):
            raise InvalidLine("every assistant message has weight 0: nothing to learn from", where)
    return out


def _text(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None:
        raise InvalidLine(f"missing '{key}'", key)
    if not isinstance(value, str):
        raise InvalidLine(f"'{key}' must be a string", key)
    if not value.strip():
        raise InvalidLine(f"'{key}' is empty", key)
    return value


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def split_hh_dialogue(text: str) -> list[dict[str, str]]:
    """``\\n\\nHuman: … \\n\\nAssistant: …`` into chat messages."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise InvalidLine("not an HH-RLHF dialogue ('\\n\\nHuman: … \\n\\nAssistant: …')")
    msgs = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        msgs.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return msgs


def hh_rlhf_to_preference(chosen: str, rejected: str) -> dict[str, Any]:
    """Whole HH-RLHF dialogues sharing a prompt → ``{prompt, chosen, rejected}`` message lists."""
    chosen_msgs = split_hh_dialogue(chosen)
    rejected_msgs = split_hh_dialogue(rejected)
    if chosen_msgs[-1]["role"] != "assistant" or rejected_msgs[-1]["role"] != "assistant":
        raise InvalidLine("both dialogues must end with an Assistant turn")
    prompt = chosen_msgs[:-1]
    if rejected_msgs[:-1] != prompt:
        raise InvalidLine("chosen and rejected dialogues do not share the same prompt turns")
    if not chosen_msgs[-1]["content"] or not rejected_msgs[-1]["content"]:
        raise InvalidLine("the final Assistant turn is empty")
    return {"prompt": prompt, "chosen": chosen_msgs[-1:], "rejected": rejected_msgs[-1:]}


def _normalise_preference(obj: dict[str, Any]) -> dict[str, Any]:
    if "input" in obj or "preferred_output" in obj:
        inp = obj.get("input")
        if not isinstance(inp, dict):
            raise InvalidLine("'input' must be an object with 'messages'", "input")
        prompt = _check_messages(inp.get("messages"), "input.messages", need_assistant=False)
        chosen = _check_messages(obj.get("preferred_output"), "preferred_output", need_assistant=True)
        rejected = _check_messages(obj.get("non_preferred_output"), "non_preferred_output", need_assistant=True)
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise InvalidLine(f"missing '{key}'", key)
    if "prompt" not in obj and isinstance(obj["chosen"], str) and isinstance(obj["rejected"], str):
        return hh_rlhf_to_preference(obj["chosen"], obj["rejected"])
    prompt_raw = obj.get("prompt")
    if isinstance(prompt_raw, str):
        prompt = [{"role": "user", "content": _text(obj, "prompt")}]
    else:
        prompt = _check_messages(prompt_raw, "prompt", need_assistant=False)
    out: dict[str, Any] = {"prompt": prompt}
    for key in ("chosen", "rejected"):
        value = obj[key]
        if isinstance(value, str):
            out[key] = [{"role": "assistant", "content": _text(obj, key)}]
        else:
            out[key] = _check_messages(value, key, need_assistant=True)
    if out["chosen"] == out["rejected"]:
        raise InvalidLine("'chosen' and 'rejected' are identical", "rejected")
    return out


def normalise(obj: Any, expected_format: str | None = None) -> tuple[str, dict[str, Any]]:
    """Validate one decoded line; returns ``(format, canonical row)`` or raises :class:`InvalidLine`."""
    fmt = detect_format(obj)
    if expected_format == "chat" and fmt == "prompt_only" and "messages" in obj:
        # a chat file whose line has no final assistant turn: say that, not "wrong format"
        _check_messages(obj["messages"], "messages", need_assistant=True)
        raise InvalidLine("the last message must be from the assistant", "messages")
    if expected_format == "prompt_completion" and fmt == "prompt_only" and "messages" not in obj:
        # a prompt/completion file whose line lacks its completion: say that, not "wrong format"
        raise InvalidLine("missing 'completion'", "completion")
    if expected_format is not None and fmt != expected_format:
        raise InvalidLine(f"this line is a {FORMAT_LABELS[fmt]} example, but the file holds "
                          f"{FORMAT_LABELS[expected_format]} examples; use one format per file")
    if fmt == "chat":
        msgs = _check_messages(obj["messages"], "messages", need_assistant=True)
        return fmt, {"messages": msgs}
    if fmt == "prompt_completion":
        return fmt, {"prompt": _text(obj, "prompt"), "completion": _text(obj, "completion")}
    if fmt == "preference":
        return fmt, _normalise_preference(obj)
    # prompt_only: keep every other field, graders compare against them
    extra = {k: v for k, v in obj.items() if k not in ("messages", "prompt")}
    if "messages" in obj:
        prompt = _check_messages(obj["messages"], "messages", need_assistant=False)
    elif isinstance(obj.get("prompt"), str):
        prompt = [{"role": "user", "content": _text(obj, "prompt")}]
    else:
        prompt = _check_messages(obj.get("prompt"), "prompt", need_assistant=False)
    return fmt, {"prompt": prompt, **extra}


def row_text(row: dict[str, Any], fmt: str) -> str:
    """All text of a canonical row, for token counting."""
    if fmt == "chat":
        return "\n".join(m.get("content") or "" for m in row["messages"])
    if fmt == "prompt_completion":
        return str(row["prompt"]) + str(row["completion"])
    if fmt == "preference":
        msgs = row["prompt"] + row["chosen"] + row["rejected"]
        return "\n".join(m.get("content") or "" for m in msgs)
    return "\n".join(m.get("content") or "" for m in row["prompt"])


LOOKAHEAD = 100


def _decode(raw: bytes | str) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else raw


def decide_format(objects: Iterable[Any]) -> str | None:
    """The file's format, from its first lines: the most common one, where a chat line without a final
    assistant turn counts as chat when any line of the file is chat (it is then a broken chat line)."""
    counts: dict[str, int] = {}
    for obj in objects:
        try:
            fmt = detect_format(obj)
        except InvalidLine:
            continue
        counts[fmt] = counts.get(fmt, 0) + 1
    if not counts:
        return None
    if "chat" in counts and "prompt_only" in counts:
        counts["chat"] += counts.pop("prompt_only")
    return max(counts, key=lambda f: counts[f])


def validate_lines(
    lines: Iterable[bytes | str],
    *,
    max_errors: int = DEFAULT_MAX_ERRORS,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> ValidationReport:
    """Validate a whole JSONL file; stops collecting errors after ``max_errors``."""
    report = ValidationReport()

    def add(err: LineError) -> bool:
        if len(report.errors) >= max_errors:
            report.truncated = True
            return False
        report.errors.append(err)
        return True

    def parsed() -> Iterator[tuple[int, Any, LineError | None]]:
        for lineno, raw in enumerate(lines, start=1):
            try:
                text = _decode(raw)
            except UnicodeDecodeError as exc:
                yield lineno, None, LineError(lineno, f"not valid UTF-8 (byte {exc.start})")
                continue
            if not text.strip():
                continue  # blank lines (e.g. a trailing newline) are ignored
            try:
                yield lineno, json.loads(text), None
            except json.JSONDecodeError as exc:
                yield lineno, None, LineError(lineno, f"not valid JSON: {exc.msg} at column {exc.colno}")

    stream = parsed()
    head = list(itertools.islice(stream, LOOKAHEAD))
    report.format = decide_format(obj for _, obj, err in head if err is None)
    for lineno, obj, error in itertools.chain(head, stream):
        if error is not None:
            if not add(error):
                break
            continue
        try:
            fmt, row = normalise(obj, report.format)
        except InvalidLine as exc:
            if not add(LineError(lineno, exc.message, exc.field)):
                break
            continue
        report.format = report.format or fmt
        report.rows += 1
        if count_tokens is not None:
            n = count_tokens(row_text(row, fmt))
            report.tokens += n
            report.max_example_tokens = max(report.max_example_tokens, n)
            too_long = max_tokens is not None and n > max_tokens
            if too_long and not add(LineError(lineno, f"example has {n} tokens, over the limit of {max_tokens}")):
                break
    if report.rows == 0 and not report.errors:
        report.errors.append(LineError(0, "the file contains no examples"))
    return report


def read_rows(lines: Iterable[bytes | str]) -> tuple[str, list[dict[str, Any]]]:
    """Parse an already-validated file into canonical rows (the trainer's entry point)."""
    texts = [(n, _decode(raw)) for n, raw in enumerate(lines, start=1)]
    texts = [(n, t) for n, t in texts if t.strip()]
    objects = []
    for lineno, text in texts:
        try:
            objects.append((lineno, json.loads(text)))
        except json.JSONDecodeError as exc:
            raise InvalidLine(f"line {lineno}: not valid JSON: {exc.msg} at column {exc.colno}") from exc
    fmt = decide_format(obj for _, obj in objects[:LOOKAHEAD])
    rows = []
    for lineno, obj in objects:
        try:
            fmt, row = normalise(obj, fmt)
        except InvalidLine as exc:
            raise InvalidLine(f"line {lineno}: {exc.message}", exc.field) from exc
        rows.append(row)
    if fmt is None:
        raise InvalidLine("the file contains no examples")
    return fmt, rows
