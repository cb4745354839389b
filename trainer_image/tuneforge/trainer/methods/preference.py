"""Shared preparation of preference rows (``prompt``/``chosen``/``rejected`` message lists) for TRL."""

from __future__ import annotations

from typing import Any

from tuneforge.trainer.context import RunContext
from tuneforge.trainer.errors import BadInput


def _plain(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": m["role"], "content": m.get("content") or ""} for m in messages]


def to_trl_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Canonical preference rows → TRL's conversational explicit-prompt format."""
    return [
        {"prompt": _plain(r["prompt"]), "chosen": _plain(r["chosen"]), "rejected": _plain(r["rejected"])} for r in rows
    ]


def datasets(ctx: RunContext) -> tuple[Any, Any]:
    from datasets import Dataset

    if not ctx.train_rows:
        raise BadInput("the training file has no preference pairs")
    train = Dataset.from_list(to_trl_rows(ctx.train_rows))
    valid = Dataset.from_list(to_trl_rows(ctx.valid_rows)) if ctx.valid_rows else None
    return train, valid
