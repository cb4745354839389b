"""Validate an uploaded training file line by line before anything is stored."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from tuneforge.contracts.datasets import ValidationReport, validate_lines

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _tokenizer_counter(tokenizer_json: str) -> Callable[[str], int] | None:
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tokenizer_json)
    except Exception:  # a broken cache must not block uploads: fall back to the estimate
        log.warning("cannot load tokenizer %s; estimating token counts", tokenizer_json)
        return None
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


def _estimate(text: str) -> int:
    # upper-bound-ish estimate for BPE tokenizers on English text (~3.3 chars per token)
    return len(text.encode("utf-8")) // 3 + 1


def token_counter(model_cache: Path, model_id: str) -> Callable[[str], int]:
    path = model_cache / model_id / "tokenizer.json"
    counter = _tokenizer_counter(str(path)) if path.is_file() else None
    return counter or _estimate


def validate_upload(
    lines: Iterable[bytes], *, max_tokens: int, max_errors: int, count_tokens: Callable[[str], int]
) -> ValidationReport:
    return validate_lines(lines, max_errors=max_errors, max_tokens=max_tokens, count_tokens=count_tokens)
