"""Validate an uploaded training file line by line before anything is stored."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from tuneforge.contracts.datasets import LineError, ValidationReport, validate_lines

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


def validate_eval_lines(lines: Iterable[bytes], *, max_errors: int) -> ValidationReport:
    """An ``evals`` file: one JSON object per line (OpenAI's ``{"item": {...}}`` or the item itself). Its rows
    are checked against an eval's item schema when a run names the file."""
    import json

    report = ValidationReport(format="evals")
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem: str | None = f"not valid UTF-8 (byte {exc.start})"
        else:
            if not text.strip():
                continue
            try:
                problem = None if isinstance(json.loads(text), dict) else "a row must be a JSON object"
            except ValueError as exc:
                problem = f"not valid JSON: {exc}"
        if problem is None:
            report.rows += 1
        elif len(report.errors) >= max_errors:
            report.truncated = True
        else:
            report.errors.append(LineError(number, problem))
    if report.rows == 0 and not report.errors:
        report.errors.append(LineError(0, "the file contains no items"))
    return report
