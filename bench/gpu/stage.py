"""Stage what the GPU run reads into ``.gpu-bench/`` (ignored by git, carried to the GPU machine).

The GPU machine gets this checkout and the paths a device call carries, not ``../shared`` beside it, and it
cannot download anything. So, here, once:

- ``.gpu-bench/tokenizer/``: SmolLM2-135M-Instruct's tokenizer files, from the bundled GGUF model converted in
  the model cache (``tuneforge.trainer.models.resolve_model`` converts it on first use);
- ``.gpu-bench/data/``: the slices of ``../shared/data`` the run reads, laid out the same way: the first
  ``--gsm8k-rows`` GSM8K train rows and the HH-RLHF harmless-base test pairs, with their licences.

    .venv/bin/python bench/gpu/stage.py [--shared-data ../shared/data] [--dest .gpu-bench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SHARED = Path(os.environ.get("TUNEFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def stage_tokenizer(dest: Path, model: str) -> None:
    for extra in ("service", "operator", "trainer_image"):
        sys.path.insert(0, str(REPO / extra))
    from tuneforge.trainer.models import resolve_model

    source = resolve_model(model)
    dest.mkdir(parents=True, exist_ok=True)
    copied = [n for n in TOKENIZER_FILES if (source / n).is_file()]
    for name in copied:
        shutil.copy2(source / name, dest / name)
    print(f"tokenizer: {', '.join(copied)} from {source}")


def stage_data(shared: Path, dest: Path, gsm8k_rows: int) -> None:
    (dest / "gsm8k").mkdir(parents=True, exist_ok=True)
    with open(shared / "gsm8k" / "train.jsonl") as src, open(dest / "gsm8k" / "train.jsonl", "w") as out:
        for i, line in enumerate(src):
            if i >= gsm8k_rows:
                break
            out.write(line)
    (dest / "hh-rlhf").mkdir(parents=True, exist_ok=True)
    shutil.copy2(shared / "hh-rlhf" / "harmless-base-test.jsonl.gz", dest / "hh-rlhf")
    for name in ("gsm8k", "hh-rlhf"):
        if (shared / name / "LICENSE").is_file():
            shutil.copy2(shared / name / "LICENSE", dest / name / "LICENSE")
    print(f"data: {gsm8k_rows} GSM8K train rows and the HH-RLHF harmless-base test pairs from {shared}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared-data", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--dest", type=Path, default=REPO / ".gpu-bench")
    parser.add_argument("--gsm8k-rows", type=int, default=1000, help="the GPU plan reads at most 480")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="whose tokenizer to stage")
    args = parser.parse_args(argv)
    if not (args.shared_data / "gsm8k" / "train.jsonl").is_file():
        print(f"error: no GSM8K at {args.shared_data}/gsm8k/train.jsonl (pass --shared-data or set "
              "TUNEFORGE_SHARED_DATA)", file=sys.stderr)
        return 2
    stage_tokenizer(args.dest / "tokenizer", args.model)
    stage_data(args.shared_data, args.dest / "data", args.gsm8k_rows)
    total = sum(p.stat().st_size for p in args.dest.rglob("*") if p.is_file())
    print(f"staged {total / 2**20:.1f} MiB in {args.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
