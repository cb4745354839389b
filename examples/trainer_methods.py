"""Every training method on the bundled SmolLM2-135M-Instruct, straight through the trainer (no service).

    PYTHONPATH=service:operator:trainer_image HF_HUB_OFFLINE=1 python examples/trainer_methods.py sft
    ... dpo | reward | grpo        (add --rows/--valid-rows/--steps to trade time for quality)

The measured figures and the exact commands (small slices for 2 CPU cores) are in docs/methods.md.

Each run writes a JobSpec over a local object store, runs ``python -m tuneforge.trainer`` and prints the
held-out figures before training (step 0, the base model) and after:

- ``sft``: GSM8K (question → answer), validation loss and token accuracy on GSM8K test questions;
- ``dpo``: HH-RLHF harmless-base pairs, validation preference accuracy and reward margin;
- ``reward``: the same pairs, pairwise accuracy of the reward model on held-out pairs;
- ``grpo``: GSM8K prompts, a multi grader (worked answer ending in ``#### N``; the right number), mean reward
  on held-out prompts.

Through the REST API the same jobs are ``method.type`` supervised / dpo / reward_model / reinforcement.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TUNEFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
PYTHONPATH = os.pathsep.join(str(REPO / p) for p in ("service", "operator", "trainer_image"))
#: GSM8K reward with partial credit (OpenAI's multi grader): 0.2 for a worked answer (a calculation "... = 12", then
#: a last line "#### <number>"), 0.8 for the right number (the last number in the completion against the one after
#: "####" in the reference). A 135M model is rarely right, so without the format term nearly every group of
#: completions scores 0 and GRPO learns nothing; a format term that accepts a bare "#### N" is gamed (the tuned
#: model answered "#### 1" to everything), hence the calculation it asks for.
GSM8K_GRADER = {
    "type": "multi",
    "graders": {
        "format": {"type": "regex", "reference_field": None,
                   "pattern": r"(?s)=\s*-?[\d,]*\.?\d+.*\n####\s*-?[\d,]*\.?\d+\s*$"},
        "correct": {
            "type": "regex",
            "reference_field": "answer",
            "pattern": r"(-?[\d,]*\.?\d+)",
            "reference_pattern": r"####\s*(-?[\d,]*\.?\d+)",
        },
    },
    "calculate_output": "0.2 * format + 0.8 * correct",
}


def gsm8k(split: str, n: int) -> list[dict[str, Any]]:
    with open(DATA / "gsm8k" / f"{split}.jsonl") as fh:
        return [json.loads(line) for _, line in zip(range(n), fh, strict=False)]


def hh_pairs(n: int, offset: int) -> list[dict[str, Any]]:
    with gzip.open(DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt") as fh:
        lines = [json.loads(line) for line in fh]
    sys.path.insert(0, str(REPO / "trainer_image"))
    from tuneforge.contracts.datasets import InvalidLine, hh_rlhf_to_preference

    # the trainer accepts whole HH-RLHF dialogues directly: {"chosen": "...", "rejected": "..."}; a few rows of
    # the public file are not a valid pair (the two dialogues differ before the last turn): skip those
    out: list[dict[str, Any]] = []
    for r in lines[offset:]:
        try:
            hh_rlhf_to_preference(r["chosen"], r["rejected"])
        except InvalidLine:
            continue
        out.append({"chosen": r["chosen"], "rejected": r["rejected"]})
        if len(out) == n:
            break
    return out


def build(method: str, rows: int, valid_rows: int) -> tuple[dict[str, Any], list[Any], list[Any], str]:
    if method == "sft":

        def chat(r: dict[str, Any]) -> dict[str, Any]:
            return {"messages": [{"role": "user", "content": r["question"]},
                                 {"role": "assistant", "content": r["answer"]}]}  # fmt: skip

        return (
            {"type": "supervised"},
            [chat(r) for r in gsm8k("train", rows)],
            [chat(r) for r in gsm8k("test", valid_rows)],
            "chat",
        )
    if method in ("dpo", "reward"):
        kind = {"type": "dpo"} if method == "dpo" else {"type": "reward_model"}
        return kind, hh_pairs(rows, 0), hh_pairs(valid_rows, 2000), "preference"
    if method == "grpo":

        def prompt(r: dict[str, Any]) -> dict[str, Any]:
            content = r["question"] + "\nEnd your answer with '#### <number>'."
            return {"prompt": [{"role": "user", "content": content}], "answer": r["answer"]}

        return (
            {"type": "reinforcement", "algorithm": "grpo", "grader": GSM8K_GRADER},
            [prompt(r) for r in gsm8k("train", rows)],
            [prompt(r) for r in gsm8k("test", valid_rows)],
            "prompt_only",
        )
    raise SystemExit(f"unknown method {method!r}")


HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "sft": {"n_epochs": 1, "batch_size": 8, "learning_rate": 2e-4, "max_length": 512},
    "dpo": {"n_epochs": 1, "batch_size": 8, "learning_rate": 1e-4, "max_length": 192, "beta": 0.1},
    "reward": {"n_epochs": 1, "batch_size": 8, "learning_rate": 2e-4, "max_length": 192},
    "grpo": {"n_epochs": 1, "batch_size": 2, "learning_rate": 5e-4, "max_length": 512, "num_generations": 6,
             "max_completion_length": 128, "kl_coef": 0.02, "temperature": 0.8},
}  # fmt: skip
DEFAULT_ROWS = {"sft": (96, 32), "dpo": (256, 128), "reward": (256, 128), "grpo": (96, 32)}
HEADLINE = {
    "sft": ("valid_loss", "valid_mean_token_accuracy"),
    "dpo": (
        "valid_preference_accuracy",
        "valid_reward_margin",
        "valid_loss",
        "valid_logps_chosen",
        "valid_logps_rejected",
    ),
    "reward": ("valid_preference_accuracy", "valid_loss"),
    "grpo": ("valid_mean_reward", "valid_reward_format", "valid_reward_correct"),
}


def _override(item: str) -> tuple[str, Any]:
    key, _, value = item.partition("=")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("method", choices=sorted(HYPERPARAMETERS))
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--valid-rows", type=int)
    parser.add_argument("--steps", type=int, default=-1, help="max optimizer steps (default: one epoch)")
    parser.add_argument("--keep", help="keep the store in this directory")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a hyperparameter (JSON value)"
    )
    ns = parser.parse_args()
    rows, valid_rows = DEFAULT_ROWS[ns.method]
    kind, train, valid, fmt = build(ns.method, ns.rows or rows, ns.valid_rows or valid_rows)
    root = Path(ns.keep or tempfile.mkdtemp(prefix=f"tuneforge-example-{ns.method}-"))
    store = root / "store"
    (store / "files").mkdir(parents=True, exist_ok=True)
    for name, data in (("train", train), ("valid", valid)):
        (store / "files" / name).write_text("".join(json.dumps(r) + "\n" for r in data))
    job_id = f"ftjob-example-{ns.method}"
    spec = {
        "job_id": job_id,
        "tenant_id": "example",
        "method": kind,
        "base_model": ns.model,
        "training_file": {"file_id": "train", "key": "files/train", "format": fmt, "rows": len(train)},
        "validation_file": {"file_id": "valid", "key": "files/valid", "format": fmt, "rows": len(valid)},
        "hyperparameters": {
            **HYPERPARAMETERS[ns.method],
            **dict(_override(item) for item in ns.set),
            "max_steps": ns.steps,
            "checkpoint_every_steps": 0,
        },
        "storage_url": store.as_uri(),
        "output_prefix": f"jobs/{job_id}",
        "seed": 42,
    }
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneforge.trainer", "--spec", str(spec_path)], env=env, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    first: dict[str, Any] = {}
    last: dict[str, Any] = {}
    with (root / "events.jsonl").open("w") as events:  # every event with its data (per-step rewards, ...)
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            events.write(line)
            print(f"[{event['kind']}] {event['message']}", flush=True)
            data = event.get("data", {})
            if event["kind"] == "metrics" and any(k.startswith("valid_") for k in data):
                if data.get("step") == 0:
                    first = data
                last = data
    if proc.wait() != 0:
        return proc.returncode
    print(f"\n{ns.method} on {ns.model}: {len(train)} training rows, {len(valid)} held-out rows")
    for key in HEADLINE[ns.method]:
        if key in first and key in last:
            print(f"  {key:28} base {first[key]:.4f} -> tuned {last[key]:.4f}")
    print(f"tuned model: {store / spec['output_prefix'] / 'model'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
