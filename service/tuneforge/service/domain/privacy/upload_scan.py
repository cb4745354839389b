"""The upload path's PII scan: one choice per upload (``pii_action``), findings per line and field.

- ``report`` (the default): the file is stored as sent; its object lists the findings (``pii``);
- ``reject``: a file with any finding is refused with a 400 naming the first line, field and kind; nothing is
  stored (the streaming write is aborted like for an invalid line);
- ``redact``: each finding is replaced by its kind's placeholder before the bytes reach the store, so the stored
  bytes, size, digest, rows and token counts are the redacted file's; the object lists what was replaced.

Scanning happens in the validator's thread (report, reject) or line by line in front of the store (redact), a line
at a time, so memory stays bounded by the longest line, as in the validator. Findings never hold the matched text:
the file object would otherwise copy the personal data into the database.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tuneforge.service.core.errors import InvalidRequest
from tuneforge.service.domain.privacy.scanner import DESCRIPTIONS, Finding, scan_line

PII_ACTIONS = ("report", "reject", "redact")
#: findings shown in a 400's message (up to ``max_listed`` are in ``details``)
SHOWN = 5


@dataclass
class PiiTally:
    """What the scan found in one upload: counts per kind (all) and the first ``max_listed`` findings."""

    max_listed: int
    counts: dict[str, int] = field(default_factory=dict)
    listed: list[dict[str, Any]] = field(default_factory=list)
    lines: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, line: int, findings: list[Finding]) -> None:
        if not findings:
            return
        self.lines += 1
        for finding in findings:
            self.counts[finding.kind] = self.counts.get(finding.kind, 0) + 1
            if len(self.listed) < self.max_listed:
                self.listed.append({"line": line, "field": finding.field, "kind": finding.kind,
                                    "start": finding.start, "end": finding.end})

    def report(self, action: str) -> dict[str, Any]:
        """The file object's ``pii``."""
        return {"action": action, "total": self.total, "lines": self.lines, "counts": dict(sorted(self.counts.items())),
                "findings": self.listed, "truncated": self.total > len(self.listed)}


def _where(finding: dict[str, Any]) -> str:
    field_part = f", field '{finding['field']}'" if finding["field"] else ""
    return f"line {finding['line']}{field_part}: {DESCRIPTIONS[finding['kind']]}"


def rejected(filename: str, tally: PiiTally) -> InvalidRequest:
    shown = "; ".join(_where(f) for f in tally.listed[:SHOWN])
    more = tally.total - min(SHOWN, len(tally.listed))
    suffix = f"; and {more} more" if more > 0 else ""
    return InvalidRequest(
        f"File '{filename}' contains personal data or secrets and pii_action is 'reject': {tally.total} finding(s) "
        f"in {tally.lines} line(s): {shown}{suffix}. Remove them, or upload with pii_action 'redact'.",
        param="file", code="pii_detected",
        details=[{**{k: f[k] for k in ("line", "field", "kind")}, "message": DESCRIPTIONS[f["kind"]]}
                 for f in tally.listed])


def scanned(lines: Iterable[bytes], tally: PiiTally) -> Iterator[bytes]:
    """The lines as they are, each scanned on the way (line numbers as the validator counts them)."""
    for number, line in enumerate(lines, start=1):
        tally.add(number, scan_line(line).findings)
        yield line


class LineRedactor:
    """Bytes in, the same lines out with their findings replaced; a partial line waits for its end."""

    def __init__(self, tally: PiiTally) -> None:
        self.tally = tally
        self._pending = b""
        self._number = 0

    def _line(self, raw: bytes) -> bytes:
        self._number += 1
        result = scan_line(raw, redacting=True)
        self.tally.add(self._number, result.findings)
        return result.redacted if result.redacted is not None else raw

    def feed(self, data: bytes) -> bytes:
        *lines, self._pending = (self._pending + data).split(b"\n")
        return b"".join(self._line(line + b"\n") for line in lines)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return self._line(rest) if rest else b""
