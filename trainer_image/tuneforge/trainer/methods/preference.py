"""Shared preparation of preference rows (``prompt``/``chosen``/``rejected`` message lists) for TRL.

Long multi-turn prompts are shortened from the front before TRL sees them: TRL's DPO trainer truncates the
*end* of prompt + response to ``max_length`` (and its reward trainer drops such pairs), so a long dialogue
would lose exactly the two responses that differ, leaving a pair that teaches nothing and scores a tie.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneforge.trainer.context import RunContext
from tuneforge.trainer.errors import BadInput

Messages = list[dict[str, Any]]
#: number of tokens of a conversation (prompt + one response) as the model will see it
CountTokens = Callable[[Messages], int]


def _plain(messages: Messages) -> Messages:
    return [{"role": m["role"], "content": m.get("content") or ""} for m in messages]


def to_trl_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Canonical preference rows → TRL's conversational explicit-prompt format."""
    return [
        {"prompt": _plain(r["prompt"]), "chosen": _plain(r["chosen"]), "rejected": _plain(r["rejected"])} for r in rows
    ]


@dataclass
class FitStats:
    shortened: int = 0  # prompts that lost their oldest turns
    still_too_long: int = 0  # even the last turn with the longer response exceeds max_length


def fit_prompt(row: dict[str, Any], count: CountTokens, max_length: int) -> tuple[dict[str, Any], bool, bool]:
    """Drop the oldest prompt turns (never a leading system message, never the last turn) until prompt + the
    longer response fits ``max_length``. Returns the row and whether it was shortened / still does not fit."""

    def fits(prompt: Messages) -> bool:
        return max(count(prompt + row["chosen"]), count(prompt + row["rejected"])) <= max_length

    prompt = row["prompt"]
    if fits(prompt):
        return row, False, False
    head = [m for m in prompt[:1] if m["role"] == "system"]
    turns = prompt[len(head):]
    while len(turns) > 1:
        # drop a user+assistant exchange at a time so the prompt still starts with a user turn
        turns = turns[2:] if len(turns) > 2 and turns[1]["role"] != "user" else turns[1:]
        if fits(head + turns):
            return {**row, "prompt": head + turns}, True, False
    return {**row, "prompt": head + turns}, True, True


def fit_rows(rows: list[dict[str, Any]], count: CountTokens, max_length: int) -> tuple[list[dict[str, Any]], FitStats]:
    stats = FitStats()
    out = []
    for row in rows:
        fitted, shortened, too_long = fit_prompt(row, count, max_length)
        stats.shortened += shortened
        stats.still_too_long += too_long
        out.append(fitted)
    return out, stats


def chat_token_counter(tokenizer: Any) -> CountTokens:
    def count(messages: Messages) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))

    return count


def datasets(ctx: RunContext, tokenizer: Any) -> tuple[Any, Any]:
    from datasets import Dataset

    if not ctx.train_rows:
        raise BadInput("the training file has no preference pairs")
    count = chat_token_counter(tokenizer)
    max_length = ctx.hp.max_length

    def prepare(rows: list[dict[str, Any]], role: str) -> Any:
        fitted, stats = fit_rows(to_trl_rows(rows), count, max_length)
        if stats.shortened:
            ctx.reporter.warn(
                f"{stats.shortened} of {len(rows)} {role} pairs had prompts longer than max_length {max_length} "
                "allows with their responses; their oldest turns were left out"
                + (f" ({stats.still_too_long} still do not fit and are truncated)" if stats.still_too_long else "")
            )
        return Dataset.from_list(fitted)

    return prepare(ctx.train_rows, "training"), prepare(ctx.valid_rows, "validation") if ctx.valid_rows else None
