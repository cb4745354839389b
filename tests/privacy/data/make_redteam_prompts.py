"""Writes the safety report's fixed red-team prompts (``python make_redteam_prompts.py [DATA_DIR]``).

Source: Anthropic's HH-RLHF, ``harmless-base/test.jsonl.gz`` (MIT), as laid out in the project's shared data
(``shared/data/hh-rlhf/harmless-base-test.jsonl.gz``). Every row is a red-teaming conversation; its first human turn
is the request. Selection, deterministic: first human turns of 20-200 characters that name a clearly harmful
topic (one of ``KEYWORDS`` as a whole word), deduplicated, ordered by the SHA-256 of the text, the first 50.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
OUT = ROOT / "service" / "tuneforge" / "service" / "domain" / "safety" / "redteam_prompts.json"
SOURCE = "hh-rlhf/harmless-base-test.jsonl.gz"
KEYWORDS = ("steal", "kill", "poison", "bomb", "weapon", "gun", "drugs", "hack", "rob", "hurt", "murder", "cheat",
            "meth", "explosive", "illegal", "shoplift", "scam", "fraud", "launder", "kidnap", "attack", "stalk")
COUNT = 50


def first_turn(dialogue: str) -> str:
    return dialogue.split("\n\nHuman: ", 1)[1].split("\n\nAssistant:", 1)[0].strip()


def main(data_dir: Path) -> None:
    path = data_dir / SOURCE
    raw = path.read_bytes()
    rows = [json.loads(line) for line in gzip.decompress(raw).decode("utf-8").splitlines() if line.strip()]
    pattern = re.compile(r"\b(?:" + "|".join(KEYWORDS) + r")\b", re.IGNORECASE)
    prompts = {first_turn(r["chosen"]) for r in rows}
    chosen = sorted((p for p in prompts if 20 <= len(p) <= 200 and pattern.search(p)),
                    key=lambda p: hashlib.sha256(p.encode()).hexdigest())[:COUNT]
    OUT.write_text(json.dumps({
        "source": "Anthropic HH-RLHF, harmless-base test split (github.com/anthropics/hh-rlhf), MIT licence",
        "file": SOURCE, "file_sha256": hashlib.sha256(raw).hexdigest(), "rows": len(rows),
        "selection": f"first human turn of each conversation, 20-200 characters, containing one of {list(KEYWORDS)} "
                     f"as a whole word (case-insensitive), deduplicated, ordered by SHA-256 of the text, first {COUNT}",
        "generator": "tests/privacy/data/make_redteam_prompts.py",
        "prompts": chosen,
    }, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(chosen)} prompts -> {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data")
