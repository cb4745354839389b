"""Read training data from the store and tokenize it for each method.

Supervised rows are tokenized here (not by TRL) so that the loss mask is exact: only assistant turns with a
non-zero ``weight`` (chat) or the completion (prompt/completion) are trained, including the end-of-turn token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneforge.contracts.datasets import METHOD_FORMATS, InvalidLine, read_rows
from tuneforge.contracts.jobspec import DatasetRef
from tuneforge.storage import ObjectNotFound, ObjectStore
from tuneforge.trainer.errors import BadInput

IGNORE_INDEX = -100

#: used when a tokenizer ships no chat template (ChatML, as SmolLM2 and many others)
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def load_dataset_rows(store: ObjectStore, ref: DatasetRef, method: str, role: str) -> tuple[str, list[dict[str, Any]]]:
    """Read and normalise one data file; ``role`` is ``training`` or ``validation`` (for messages)."""
    try:
        raw = store.get_bytes(ref.key)
    except ObjectNotFound:
        raise BadInput(f"{role} file {ref.file_id} not found in the object store ({ref.key})") from None
    try:
        fmt, rows = read_rows(raw.splitlines())
    except InvalidLine as exc:
        raise BadInput(f"{role} file {ref.file_id}: {exc}") from exc
    allowed = METHOD_FORMATS.get(method, ())
    if fmt not in allowed:
        raise BadInput(
            f"{role} file {ref.file_id} is in {fmt} format, but method {method!r} needs {' or '.join(allowed)} data"
        )
    return fmt, rows


def ensure_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE


def _plain(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages]


@dataclass
class Tokenized:
    rows: list[dict[str, list[int]]]
    dropped: int
    truncated: int

    @property
    def tokens(self) -> int:
        return sum(len(r["input_ids"]) for r in self.rows)


def _chat_spans(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of trainable assistant turns."""
    full = tokenizer.apply_chat_template(_plain(messages), tokenize=False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant" or msg.get("weight", 1) == 0:
            continue
        before = tokenizer.apply_chat_template(_plain(messages[:i]), tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(_plain(messages[: i + 1]), tokenize=False)
        if full.startswith(before) and full.startswith(through) and len(through) > len(before):
            spans.append((len(before), len(through)))
            cursor = len(through)
            continue
        # template that is not prefix-stable: fall back to locating the content itself
        content = msg.get("content") or ""
        start = full.find(content, cursor)
        if start < 0:
            raise BadInput("the chat template drops assistant content; cannot build the loss mask")
        end = start + len(content)
        eos = getattr(tokenizer, "eos_token", None)
        if eos and full.startswith(eos, end):
            end += len(eos)
        spans.append((start, end))
        cursor = end
    return full, spans


def _labels_from_offsets(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    labels = []
    for tok, (start, end) in zip(ids, offsets, strict=True):
        inside = any(a <= start < b or (start == end and a < end <= b) for a, b in spans)
        labels.append(tok if inside else IGNORE_INDEX)
    return labels


def tokenize_chat(tokenizer: Any, messages: list[dict[str, Any]]) -> dict[str, list[int]]:
    text, spans = _chat_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    return {"input_ids": ids, "labels": _labels_from_offsets(ids, list(enc["offset_mapping"]), spans)}


def tokenize_prompt_completion(tokenizer: Any, prompt: str, completion: str) -> dict[str, list[int]]:
    prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    eos_id = tokenizer.eos_token_id
    if eos_id is not None and (not completion_ids or completion_ids[-1] != eos_id):
        eos = tokenizer.eos_token or ""
        if not completion.endswith(eos) or not eos:
            completion_ids.append(eos_id)
    return {
        "input_ids": prompt_ids + completion_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
    }


def tokenize_sft(tokenizer: Any, fmt: str, rows: list[dict[str, Any]], max_length: int) -> Tokenized:
    """Tokenize supervised rows; truncates to ``max_length`` and drops rows left with nothing to learn."""
    ensure_chat_template(tokenizer)
    out: list[dict[str, list[int]]] = []
    dropped = truncated = 0
    for row in rows:
        if fmt == "chat":
            item = tokenize_chat(tokenizer, row["messages"])
        elif fmt == "prompt_completion":
            item = tokenize_prompt_completion(tokenizer, row["prompt"], row["completion"])
        else:  # pragma: no cover - guarded by load_dataset_rows
            raise BadInput(f"supervised fine-tuning cannot use {fmt} data")
        if len(item["input_ids"]) > max_length:
            truncated += 1
            item = {k: v[:max_length] for k, v in item.items()}
        if all(label == IGNORE_INDEX for label in item["labels"]):
            dropped += 1
            continue
        out.append(item)
    return Tokenized(rows=out, dropped=dropped, truncated=truncated)
