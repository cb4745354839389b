"""Small, deterministic chat data for end-to-end jobs."""

from __future__ import annotations

import json
from pathlib import Path


def write_chat_file(path: Path, rows: int = 24, offset: int = 0) -> Path:
    with open(path, "w") as fh:
        for i in range(offset, offset + rows):
            a, b = i % 7 + 1, i % 5 + 2
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": f"What is {a} plus {b}?"},
                {"role": "assistant", "content": f"{a} plus {b} is {a + b}."},
            ]}) + "\n")
    return path
