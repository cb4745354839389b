"""Find and redact personal data and secrets in a text, and in one JSONL line field by field.

A line that is a JSON value is scanned in its decoded strings (so ``\\u0040`` is an ``@``, and a PEM block whose
newlines are ``\\n`` escapes is one block), each finding named by its field's path as the dataset validator names
fields (``messages[1].content``); a line that is not JSON is scanned as text. Object keys are not scanned.
Redaction replaces each finding by its kind's placeholder (``[EMAIL]``); a redacted JSON line is written again
with ``json.dumps`` (so its spacing may change), a line without findings is kept byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tuneforge.service.domain.privacy.detectors import DETECTORS, PRECEDENCE, Span, digit_count

PLACEHOLDERS = {
    "email": "[EMAIL]", "phone": "[PHONE]", "credit_card": "[CREDIT_CARD]", "iban": "[IBAN]",
    "us_ssn": "[US_SSN]", "uk_nino": "[UK_NINO]", "ipv4": "[IP_ADDRESS]", "ipv6": "[IP_ADDRESS]",
    "secret": "[SECRET]",
}
#: how a kind reads in a message
DESCRIPTIONS = {
    "email": "an e-mail address", "phone": "a phone number", "credit_card": "a payment card number",
    "iban": "an IBAN", "us_ssn": "a US Social Security number", "uk_nino": "a UK National Insurance number",
    "ipv4": "an IPv4 address", "ipv6": "an IPv6 address", "secret": "a secret (API key, token or private key)",
}


def find(text: str) -> list[Span]:
    """Every finding in ``text``, in order, none overlapping (a longer span wins, then the kind's precedence)."""
    digits = digit_count(text)
    candidates = [span for detector in DETECTORS for span in detector.find(text, digits)]
    if len(candidates) < 2:
        return candidates
    candidates.sort(key=lambda s: (s.start, -(s.end - s.start), PRECEDENCE[s.kind]))
    kept: list[Span] = []
    for span in candidates:
        if kept and span.start < kept[-1].end:
            continue
        kept.append(span)
    return kept


def redact(text: str, spans: list[Span]) -> str:
    out, at = [], 0
    for span in spans:
        out.append(text[at:span.start])
        out.append(PLACEHOLDERS[span.kind])
        at = span.end
    out.append(text[at:])
    return "".join(out)


@dataclass(frozen=True)
class Finding:
    kind: str
    #: the JSON path of the string (``messages[1].content``); None for a line that is not JSON
    field: str | None
    #: character offsets in that string (or in the decoded line)
    start: int
    end: int


Path = tuple[str | int, ...]


def field_name(path: Path) -> str | None:
    """The validator's spelling of a path: ``messages[1].content``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or None


def _strings(value: Any, path: Path) -> Iterator[tuple[Path, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*path, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, (*path, i))


def _replace(value: Any, path: Path, redacted: dict[Path, str]) -> Any:
    if isinstance(value, str):
        return redacted.get(path, value)
    if isinstance(value, dict):
        return {k: _replace(v, (*path, str(k)), redacted) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, (*path, i), redacted) for i, v in enumerate(value)]
    return value


@dataclass(frozen=True)
class LineScan:
    findings: list[Finding]
    #: the line with every finding replaced (same line ending); None when asked not to redact or nothing was found
    redacted: bytes | None = None


def scan_line(raw: bytes, *, redacting: bool = False) -> LineScan:
    text = raw.decode("utf-8", "replace")
    body = text.rstrip("\r\n")
    ending = text[len(body):]
    if not body.strip():
        return LineScan([])
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        spans = find(body)
        findings = [Finding(s.kind, None, s.start, s.end) for s in spans]
        if redacting and spans:
            return LineScan(findings, (redact(body, spans) + ending).encode("utf-8"))
        return LineScan(findings)
    findings = []
    redacted: dict[Path, str] = {}
    for path, string in _strings(value, ()):
        spans = find(string)
        if spans:
            name = field_name(path)
            findings.extend(Finding(s.kind, name, s.start, s.end) for s in spans)
            redacted[path] = redact(string, spans)
    if redacting and findings:
        rewritten = json.dumps(_replace(value, (), redacted), ensure_ascii=False)
        return LineScan(findings, (rewritten + ending).encode("utf-8"))
    return LineScan(findings)
