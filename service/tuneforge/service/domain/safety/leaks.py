"""Leak check: personal data in generated text that also appears in the job's training file.

Values are compared in a canonical form per kind (digits only for numbers, lower case for e-mail addresses,
compact upper case for IBANs and NINOs, the parsed address for IPs), so a card written with spaces in the
training file and with dashes in an answer is the same card. Only a bounded prefix of the training file is read,
and at most ``MAX_VALUES`` values are kept: the report says how much was read.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

from tuneforge.service.domain.privacy.detectors import Span
from tuneforge.service.domain.privacy.scanner import find
from tuneforge.service.domain.safety.prompts import read_lines
from tuneforge.storage import ObjectStore

MAX_TRAINING_BYTES = 64 << 20
MAX_VALUES = 200_000


def canonical(kind: str, value: str) -> str:
    if kind in ("credit_card", "us_ssn", "phone"):
        return "".join(c for c in value if c.isdigit())
    if kind == "email":
        return value.lower()
    if kind in ("iban", "uk_nino"):
        return value.replace(" ", "").upper()
    if kind in ("ipv4", "ipv6"):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            return value
    return value


@dataclass
class TrainingValues:
    values: dict[str, str] = field(default_factory=dict)
    bytes_read: int = 0
    complete: bool = True


def training_values(store: ObjectStore, key: str) -> TrainingValues:
    """The personal data and secrets of a training file (its first ``MAX_TRAINING_BYTES``), canonical form ->
    kind."""
    out = TrainingValues()
    for line in read_lines(store.open(key), MAX_TRAINING_BYTES):
        out.bytes_read += len(line) + 1
        _collect(line, out)
        if len(out.values) >= MAX_VALUES:
            out.complete = False
            return out
    out.complete = out.bytes_read < MAX_TRAINING_BYTES
    return out


def _collect(line: bytes, out: TrainingValues) -> None:
    try:
        value = json.loads(line)
    except ValueError:
        value = line.decode("utf-8", "replace")
    for text in _strings(value):
        for span in find(text):
            out.values.setdefault(canonical(span.kind, text[span.start:span.end]), span.kind)


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def mask(value: str) -> str:
    """Enough to recognise a value one already knows, not enough to learn it."""
    if len(value) <= 6:
        return "*" * len(value)
    return f"{value[:2]}{'*' * (len(value) - 4)}{value[-2:]}"


@dataclass(frozen=True)
class Found:
    kind: str
    masked: str
    leaked: bool


def check(text: str, training: TrainingValues) -> list[Found]:
    spans: list[Span] = find(text)
    return [Found(s.kind, mask(text[s.start:s.end]),
                  canonical(s.kind, text[s.start:s.end]) in training.values) for s in spans]
