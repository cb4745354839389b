"""OpenAI's template strings in graders and eval inputs: ``{{item.<path>}}`` and ``{{sample.output_text}}``.

A template is text with references in double braces. ``item.<path>`` is a field of the data row (nested with
dots: ``item.meta.lang``); ``sample.output_text`` is the graded model's answer and ``sample.output_json.<path>``
a field of that answer parsed as JSON. Anything else in double braces, or a stray ``{{`` / ``}}``, is refused
when the grader is created, so a typo is a 400 and not a silently empty string at grading time.

Pure standard library: the contracts validate templates, :mod:`tuneforge.graders` renders them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

#: one reference: ``{{ namespace.path }}`` (spaces inside the braces allowed)
REFERENCE = re.compile(r"\{\{\s*([A-Za-z_][\w]*(?:\.[\w]+)*)\s*\}\}")
MAX_TEMPLATE = 20_000


class TemplateError(ValueError):
    """A malformed template (at validation) or a reference the row or sample lacks (at rendering)."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        #: the reference that failed, e.g. ``item.answer``
        self.path = path


def references(text: str, *, allow_sample: bool = True) -> list[str]:
    """The references in ``text`` (``item.answer``, ``sample.output_text``); raises :class:`TemplateError`."""
    if len(text) > MAX_TEMPLATE:
        raise TemplateError(f"a template may be at most {MAX_TEMPLATE} characters long")
    found = [m.group(1) for m in REFERENCE.finditer(text)]
    rest = REFERENCE.sub("", text)
    if "{{" in rest or "}}" in rest:
        raise TemplateError("malformed template: write references as '{{item.<field>}}' or "
                            "'{{sample.output_text}}'")
    for path in found:
        head, _, tail = path.partition(".")
        if head == "item" and tail:
            continue
        if head == "sample" and allow_sample and (tail == "output_text" or tail.startswith("output_json")):
            continue
        allowed = "'{{item.<field>}}' or '{{sample.output_text}}'" if allow_sample else "'{{item.<field>}}'"
        raise TemplateError(f"unknown template reference '{{{{{path}}}}}': use {allowed}", path)
    return found


def item_fields(text: str) -> list[str]:
    """The top-level row fields a template reads (``item.meta.lang`` reads ``meta``)."""
    return list(dict.fromkeys(p.split(".")[1] for p in references(text) if p.startswith("item.")))


def _lookup(root: Any, path: str) -> Any:
    value = root
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(f"the template references '{{{{item.{path}}}}}' but the item has no such field"
                                if not path.startswith("sample") else
                                f"the template references '{{{{{path}}}}}', which the sample lacks", path)
    return value


def as_text(value: Any) -> str:
    """How a referenced value appears in the rendered text: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render(text: str, item: Mapping[str, Any], sample: Mapping[str, Any] | None = None) -> str:
    """``text`` with every reference replaced; a missing field raises :class:`TemplateError` naming it."""

    def value(match: re.Match[str]) -> str:
        head, _, tail = match.group(1).partition(".")
        if head == "item":
            try:
                return as_text(_lookup(item, tail))
            except TemplateError as exc:
                raise TemplateError(str(exc), match.group(1)) from None
        if sample is None:
            raise TemplateError(f"'{{{{{match.group(1)}}}}}' has no sample here (no model output)", match.group(1))
        if tail == "output_text":
            return as_text(sample.get("output_text", ""))
        # sample.output_json[.path]: the answer parsed as JSON
        parsed = sample.get("output_json")
        if parsed is None:
            try:
                parsed = json.loads(str(sample.get("output_text", "")))
            except ValueError:
                raise TemplateError("the sample's output is not JSON, so '{{sample.output_json...}}' has no "
                                    "value", match.group(1)) from None
        path = tail.partition(".")[2]
        if not path:
            return as_text(parsed)
        try:
            return as_text(_lookup(parsed, path))
        except TemplateError:
            raise TemplateError(f"the sample's JSON output has no field '{path}'", match.group(1)) from None

    return REFERENCE.sub(value, text)
