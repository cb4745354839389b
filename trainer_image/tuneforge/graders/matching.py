"""String and pattern matching for ``string_check`` and ``regex`` graders.

User patterns run with the ``regex`` module under a time limit, on texts capped in length, so a pathological
pattern costs a zero score, not a hung job or a blocked service.
"""

from __future__ import annotations

import re
from typing import Any

MAX_PATTERN = 500
MAX_TEXT = 20_000
REGEX_TIMEOUT_S = 0.05
_NUMBER_JUNK = re.compile(r"[,$\s]")


class GraderError(ValueError):
    """A grader that cannot be built here (a pattern the ``regex`` module refuses, metric data missing)."""


def compile_pattern(pattern: str, what: str) -> Any:
    if len(pattern) > MAX_PATTERN:
        raise GraderError(f"grader {what} is longer than {MAX_PATTERN} characters")
    try:
        import regex

        return regex.compile(pattern)
    except ImportError:  # pragma: no cover - regex is a dependency of the graders extra
        return re.compile(pattern)
    except Exception as exc:
        raise GraderError(f"grader {what} is not a valid regular expression: {exc}") from exc


def _timeout(compiled: Any) -> dict[str, float]:
    return {"timeout": REGEX_TIMEOUT_S} if compiled.__class__.__module__.startswith("regex") else {}


def found(compiled: Any, text: str) -> bool:
    try:
        return compiled.search(text[:MAX_TEXT], **_timeout(compiled)) is not None
    except TimeoutError:
        return False


def last_match(compiled: Any, text: str) -> str | None:
    """The last match of ``compiled`` in ``text`` (group 1 if the pattern has groups); None if none or too slow."""
    try:
        matches = list(compiled.finditer(text[:MAX_TEXT], **_timeout(compiled)))
    except TimeoutError:
        return None
    if not matches:
        return None
    last = matches[-1]
    return last.group(1) if last.groups() else last.group(0)


def normalise(text: str) -> str:
    """Case-, space- and number-format-insensitive form (``1,000.`` == ``1000``)."""
    value = text.strip().lower().rstrip(".")
    squashed = _NUMBER_JUNK.sub("", value)
    try:
        number = float(squashed)
    except ValueError:
        return " ".join(value.split())
    return str(int(number)) if number.is_integer() else str(number)


def string_check(operation: str, answer: str, reference: str) -> bool:
    """OpenAI's operations (``eq``/``ne`` here after :func:`normalise`) and tuneforge's ``contains``."""
    if operation == "eq":
        return normalise(answer) == normalise(reference)
    if operation == "ne":
        return normalise(answer) != normalise(reference)
    if operation == "like":
        return reference in answer
    if operation == "ilike":
        return reference.casefold() in answer.casefold()
    if operation == "contains":
        return normalise(reference) in normalise(answer)
    raise GraderError(f"unknown string_check operation {operation!r}")  # pragma: no cover - the contract checks
