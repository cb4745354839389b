"""The upload PII scanner: precision and recall per kind on the labelled set, and throughput, next to a baseline.

Baseline: one naive combined regex (an alternation of the textbook pattern of each kind, no checksums, no
context), the first thing one writes. Both run over the same texts in the same process:

- quality: on ``tests/privacy/data/pii_labelled.jsonl`` (414 lines, 182 of them without any value, most of those
  look-alikes), matched as the test matches (same kind, overlapping span);
- throughput: ``find`` on the labelled texts (lines/CPU-s), and the upload path's ``scan_line`` on chat-format JSONL
  lines (lines/CPU-s and MB/CPU-s) against the baseline on the same decoded strings, for two corpora: the
  labelled texts (dense: nearly every line has digits or a value) and GSM8K's training set as chat lines
  (ordinary training data, many numbers); for scale, the upload validator's own pass over the same lines
  (``validate_lines`` with the byte-length token estimate) is printed too. CPU time of this process, best of
  ``--repeat`` passes, so that other work on a shared machine slows a pass without counting in it.

    PYTHONPATH=.:service:operator:trainer_image python bench/pii_scanner.py [--repeat 5] [--gsm8k PATH]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.privacy.labelled import load, measure

from tuneforge.contracts.datasets import validate_lines
from tuneforge.service.domain.privacy.detectors import KINDS, Span
from tuneforge.service.domain.privacy.scanner import find, scan_line

NAIVE = re.compile(
    r"(?P<secret>sk-\S{20,}|AKIA\w{16}|gh[pousr]_\w{30,}|xox\w-\S+|AIza\S{35}|-----BEGIN[^-]*PRIVATE KEY-----)"
    r"|(?P<email>\S+@\S+\.\w+)"
    r"|(?P<iban>\b[A-Z]{2}\d{2}[A-Z0-9 ]{11,30}\b)"
    r"|(?P<credit_card>\b\d(?:[ -]?\d){12,18}\b)"
    r"|(?P<us_ssn>\b\d{3}-\d{2}-\d{4}\b)"
    r"|(?P<uk_nino>\b[A-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b)"
    r"|(?P<ipv6>\b[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{0,4}){2,7}\b)"
    r"|(?P<ipv4>\b\d{1,3}(?:\.\d{1,3}){3}\b)"
    r"|(?P<phone>\+?\(?\d[\d ().-]{7,}\d)"
)


def naive_find(text: str) -> list[Span]:
    return [Span(m.lastgroup or "", m.start(), m.end()) for m in NAIVE.finditer(text)]


def _rate(fn: Callable[[Any], Any], items: list[Any], repeat: int) -> float:
    """Items per CPU-second of this process, best of ``repeat`` passes (CPU time: other work on the machine
    delays a pass but is not counted in it)."""
    fn(items[0])
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - start)
    return len(items) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5,
                        help="passes over the texts for the throughput (the best counts)")
    parser.add_argument("--gsm8k", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" /
                        "gsm8k" / "train.jsonl", help="GSM8K train.jsonl (skipped when missing)")
    args = parser.parse_args()
    rows = load()
    ours, naive = measure(rows, find), measure(rows, naive_find)
    print(f"labelled set: {len(rows)} lines, {sum(len(r['spans']) for r in rows)} labelled values, "
          f"{sum(1 for r in rows if not r['spans'])} lines without any")
    print(f"{'kind':12} {'tuneforge P':>11} {'R':>6} {'naive P':>8} {'R':>6}   (tp/fp/fn ours)")
    for kind in KINDS:
        a, b = ours[kind], naive[kind]
        print(f"{kind:12} {a.precision:11.3f} {a.recall:6.3f} {b.precision:8.3f} {b.recall:6.3f}   "
              f"({a.tp}/{a.fp}/{a.fn})")
    total = {k: sum(getattr(c, k) for c in ours.values()) for k in ("tp", "fp", "fn")}
    total_naive = {k: sum(getattr(c, k) for c in naive.values()) for k in ("tp", "fp", "fn")}
    for name, t in (("tuneforge", total), ("naive", total_naive)):
        print(f"{name:9} micro: P={t['tp'] / (t['tp'] + t['fp']):.3f} R={t['tp'] / (t['tp'] + t['fn']):.3f}")

    texts = [r["text"] for r in rows]
    text_ours, text_naive = _rate(find, texts, args.repeat), _rate(naive_find, texts, args.repeat)
    print(f"throughput, texts: tuneforge {text_ours:8.0f} lines/CPU-s, naive {text_naive:8.0f} lines/CPU-s, "
          f"ratio {text_ours / text_naive:.2f}")
    corpora = {"labelled (dense)": [("Thanks, noted: " + t, t) for t in texts]}
    if args.gsm8k.is_file():
        gsm = [json.loads(line) for line in args.gsm8k.read_text().splitlines()]
        corpora["gsm8k train (7473 rows)"] = [(r["question"], r["answer"]) for r in gsm]
    for name, pairs in corpora.items():
        lines = [(json.dumps({"messages": [{"role": "system", "content": "You are a helpful assistant."},
                                           {"role": "user", "content": q},
                                           {"role": "assistant", "content": a}]}) + "\n").encode() for q, a in pairs]
        mb_per_line = sum(len(line) for line in lines) / 1e6 / len(lines)

        def naive_line(raw: bytes) -> None:
            for message in json.loads(raw)["messages"]:
                naive_find(message["content"])

        def validate(raw: bytes) -> None:
            validate_lines([raw], max_errors=1, max_tokens=10**6, count_tokens=lambda t: len(t) // 3 + 1)

        mine, base, check = (_rate(fn, lines, args.repeat) for fn in (scan_line, naive_line, validate))
        print(f"throughput, JSONL lines, {name}: tuneforge {mine:7.0f} lines/CPU-s "
              f"({mine * mb_per_line:.1f} MB/CPU-s), "
              f"naive {base:7.0f} lines/CPU-s ({base * mb_per_line:.1f} MB/CPU-s), ratio {mine / base:.2f}; "
              f"the validator alone {check:7.0f} lines/CPU-s ({check * mb_per_line:.1f} MB/CPU-s)")


if __name__ == "__main__":
    main()
