"""Precision and recall of the PII scanner per kind on the labelled set (shared by the test and bench/pii_scanner.py).

A finding is a true positive when a labelled span of the same kind overlaps it (each labelled span counts once);
every other finding is a false positive, every unmatched labelled span a false negative. Overlap rather than
exact offsets: whether "+1 " belongs to a phone number is a convention, not a detection.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.service.domain.privacy.detectors import KINDS, Span

LABELLED = Path(__file__).with_name("data") / "pii_labelled.jsonl"


def load() -> list[dict]:
    return [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    misses: list[str] = field(default_factory=list)
    false_alarms: list[str] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def measure(rows: list[dict], find: Callable[[str], list[Span]]) -> dict[str, Counts]:
    counts = {kind: Counts() for kind in KINDS}
    for row in rows:
        text = row["text"]
        gold = [(s["kind"], s["start"], s["end"]) for s in row["spans"]]
        matched: set[int] = set()
        for span in find(text):
            hit = next((i for i, (kind, start, end) in enumerate(gold)
                        if i not in matched and kind == span.kind and span.start < end and start < span.end), None)
            if hit is None:
                counts[span.kind].fp += 1
                counts[span.kind].false_alarms.append(f"{text[span.start:span.end]!r} in {text!r}")
            else:
                matched.add(hit)
                counts[span.kind].tp += 1
        for i, (kind, start, end) in enumerate(gold):
            if i not in matched:
                counts[kind].fn += 1
                counts[kind].misses.append(f"{text[start:end]!r} in {text!r}")
    return counts
