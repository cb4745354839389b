"""Every training method on the bundled SmolLM2-135M-Instruct, straight through the trainer (no service).

    PYTHONPATH=service:operator:trainer_image HF_HUB_OFFLINE=1 python examples/trainer_methods.py sft
    ... dpo | reward | grpo | ppo  (add --rows/--valid-rows/--steps to trade time for quality)

The measured figures and the exact commands (small slices for 2 CPU cores) are in docs/methods.md.

Each run writes a JobSpec over a local object store, runs ``python -m tuneforge.trainer`` and prints the
held-out figures before training (step 0, the base model) and after:

- ``sft``: GSM8K (question → answer), validation loss and token accuracy on GSM8K test questions;
- ``dpo``: HH-RLHF harmless-base pairs, validation preference accuracy and reward margin;
- ``reward``: the same pairs, pairwise accuracy of the reward model on held-out pairs;
- ``grpo``: GSM8K prompts, a multi grader (worked answer ending in ``#### N``; the right number), mean reward
  on held-out prompts;
- ``ppo``: the classic RLHF pipeline from raw HH-RLHF data, three jobs in one store: SFT on the chosen dialogues,
  a reward model on the pairs (on the SFT model), then PPO against that reward model on held-out first human
  turns; held-out mean reward-model score and KL of the SFT model (step 0) and of the PPO policy. A stage whose
  model is already in ``--keep DIR`` is not run again.

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


def hh_sft_chats(n: int, offset: int) -> list[dict[str, Any]]:
    """HH-RLHF chosen dialogues as chats; only the last (chosen) assistant turn is trained."""
    pairs = hh_pairs(n, offset)  # puts trainer_image on sys.path
    from tuneforge.contracts.datasets import hh_rlhf_to_preference

    chats = []
    for pair in pairs:
        converted = hh_rlhf_to_preference(pair["chosen"], pair["rejected"])
        earlier = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in converted["prompt"]]
        chats.append({"messages": earlier + converted["chosen"]})
    return chats


def hh_first_turns(n: int, offset: int) -> list[dict[str, Any]]:
    """The first human turn of HH-RLHF dialogues, as prompt-only rows (short, single-turn prompts)."""
    with gzip.open(DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt") as fh:
        lines = [json.loads(line) for line in fh]
    out = []
    for r in lines[offset:]:
        first = r["chosen"].split("\n\nHuman: ", 1)[-1].split("\n\nAssistant:", 1)[0].strip()
        if first:
            out.append({"prompt": [{"role": "user", "content": first}]})
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


#: the PPO pipeline's job ids in its store, and the reward model the PPO stage is graded by
PPO_STAGES = ("ftjob-example-ppo-sft", "ftjob-example-ppo-reward", "ftjob-example-ppo")
PPO_GRADER = {"type": "reward_model", "model_prefix": f"jobs/{PPO_STAGES[1]}/model"}

HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "sft": {"n_epochs": 1, "batch_size": 8, "learning_rate": 2e-4, "max_length": 512},
    "dpo": {"n_epochs": 1, "batch_size": 8, "learning_rate": 1e-4, "max_length": 192, "beta": 0.1},
    "reward": {"n_epochs": 1, "batch_size": 8, "learning_rate": 2e-4, "max_length": 192},
    "grpo": {"n_epochs": 1, "batch_size": 2, "learning_rate": 5e-4, "max_length": 512, "num_generations": 6,
             "max_completion_length": 128, "kl_coef": 0.02, "temperature": 0.8},
    # PPO stage of the pipeline: 2 prompts x 4 responses of up to 48 tokens per step, LoRA lr 3e-4, adaptive KL.
    # No missing-EOS penalty: bench/rl_reward_model.py compares this run with GRPO and RLOO, which get the raw
    # reward-model score, so PPO gets exactly that score too.
    "ppo": {"n_epochs": 1, "batch_size": 2, "learning_rate": 3e-4, "max_length": 512, "num_generations": 4,
            "warmup_ratio": 0.0, "max_completion_length": 48, "temperature": 0.7, "kl_coef": 0.05,
            "target_kl": 6.0, "num_mini_batches": 2, "missing_eos_penalty": 0.0},
    "ppo-sft": {"n_epochs": 1, "batch_size": 8, "learning_rate": 2e-4, "max_length": 256},
    "ppo-reward": {"n_epochs": 1, "batch_size": 8, "learning_rate": 2e-4, "max_length": 192},
}  # fmt: skip
DEFAULT_ROWS = {"sft": (96, 32), "dpo": (256, 128), "reward": (256, 128), "grpo": (96, 32), "ppo": (96, 16)}
#: the PPO pipeline's SFT dialogues and reward-model pairs (training / held-out), small for 2 shared CPU cores
PPO_PIPELINE_ROWS = {"sft": (64, 16), "reward": (128, 64)}
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
    "ppo": ("valid_mean_reward", "valid_kl", "valid_completions_mean_length"),
}


def _override(item: str) -> tuple[str, Any]:
    key, _, value = item.partition("=")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def write_spec(root: Path, job_id: str, kind: dict[str, Any], base_model: str, fmt: str,
               train: list[Any], valid: list[Any], hyperparameters: dict[str, Any]) -> Path:  # fmt: skip
    store = root / "store"
    (store / "files").mkdir(parents=True, exist_ok=True)
    for name, data in ((f"{job_id}-train", train), (f"{job_id}-valid", valid)):
        (store / "files" / name).write_text("".join(json.dumps(r) + "\n" for r in data))
    spec = {
        "job_id": job_id,
        "tenant_id": "example",
        "method": kind,
        "base_model": base_model,
        "training_file": {"file_id": "train", "key": f"files/{job_id}-train", "format": fmt, "rows": len(train)},
        "validation_file": {"file_id": "valid", "key": f"files/{job_id}-valid", "format": fmt, "rows": len(valid)},
        "hyperparameters": hyperparameters,
        "storage_url": store.as_uri(),
        "output_prefix": f"jobs/{job_id}",
        "seed": 42,
    }
    spec_path = root / f"{job_id}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    return spec_path


def run_job(root: Path, spec_path: Path, job_id: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Run the trainer on one JobSpec; (exit code, first and last validation metrics)."""
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneforge.trainer", "--spec", str(spec_path)], env=env, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    first: dict[str, Any] = {}
    last: dict[str, Any] = {}
    with (root / f"{job_id}.events.jsonl").open("w") as events:  # every event with its data (per-step rewards, ...)
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
    return proc.wait(), first, last


def report(method: str, model: str, train: int, valid: int, first: dict[str, Any], last: dict[str, Any],
           model_dir: Path) -> None:  # fmt: skip
    print(f"\n{method} on {model}: {train} training rows, {valid} held-out rows")
    for key in HEADLINE[method]:
        if key in first and key in last:
            print(f"  {key:28} base {first[key]:.4f} -> tuned {last[key]:.4f}")
    print(f"tuned model: {model_dir}")


def merge_adapter(base_model: str, adapter_dir: Path, out: Path) -> Path:
    """The SFT adapter merged into its base, as a plain model directory the next stages take as base model."""
    if (out / "config.json").is_file():
        return out
    sys.path[:0] = [p for p in PYTHONPATH.split(os.pathsep) if p not in sys.path]
    import torch
    from peft import PeftModel

    from tuneforge.trainer.models import load_causal_lm, load_tokenizer, resolve_model

    base = load_causal_lm(resolve_model(base_model), torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    merged.save_pretrained(str(tmp), safe_serialization=True)
    load_tokenizer(adapter_dir).save_pretrained(str(tmp))
    tmp.rename(out)
    return out


def ppo_pipeline(ns: argparse.Namespace, root: Path, overrides: dict[str, Any]) -> int:
    """SFT -> reward model -> PPO, each a tuneforge job in one store; a finished stage is not run again."""
    store = root / "store"
    sft_id, rm_id, ppo_id = PPO_STAGES

    def done(job_id: str) -> bool:
        return (store / "jobs" / job_id / "model" / "manifest.json").is_file()

    sft_rows, sft_valid = PPO_PIPELINE_ROWS["sft"]
    if not done(sft_id):
        train, valid = hh_sft_chats(sft_rows, 0), hh_sft_chats(sft_valid, 2000)
        spec = write_spec(root, sft_id, {"type": "supervised"}, ns.model, "chat", train, valid,
                          {**HYPERPARAMETERS["ppo-sft"], "checkpoint_every_steps": 0})  # fmt: skip
        code, first, last = run_job(root, spec, sft_id)
        if code:
            return code
        report("sft", ns.model, len(train), len(valid), first, last, store / "jobs" / sft_id / "model")
    sft_model = merge_adapter(ns.model, store / "jobs" / sft_id / "model", root / "sft-model")

    rm_rows, rm_valid = PPO_PIPELINE_ROWS["reward"]
    if not done(rm_id):
        train, valid = hh_pairs(rm_rows, 0), hh_pairs(rm_valid, 2000)
        spec = write_spec(root, rm_id, {"type": "reward_model"}, str(sft_model), "preference", train, valid,
                          {**HYPERPARAMETERS["ppo-reward"], "checkpoint_every_steps": 0})  # fmt: skip
        code, first, last = run_job(root, spec, rm_id)
        if code:
            return code
        report("reward", str(sft_model), len(train), len(valid), first, last, store / "jobs" / rm_id / "model")

    rows, valid_rows = DEFAULT_ROWS["ppo"]
    train, valid = hh_first_turns(ns.rows or rows, 300), hh_first_turns(ns.valid_rows or valid_rows, 2100)
    hp = {**HYPERPARAMETERS["ppo"], **overrides, "max_steps": ns.steps, "checkpoint_every_steps": 0}
    kind = {"type": "reinforcement", "algorithm": "ppo", "grader": PPO_GRADER}
    spec = write_spec(root, ppo_id, kind, str(sft_model), "prompt_only", train, valid, hp)
    code, first, last = run_job(root, spec, ppo_id)
    if code:
        return code
    report("ppo", "the SFT model", len(train), len(valid), first, last, store / "jobs" / ppo_id / "model")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("method", choices=sorted(m for m in HYPERPARAMETERS if "-" not in m))
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--valid-rows", type=int)
    parser.add_argument("--steps", type=int, default=-1, help="max optimizer steps (default: one epoch)")
    parser.add_argument("--keep", help="keep the store in this directory")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a hyperparameter (JSON value)"
    )
    ns = parser.parse_args()
    root = Path(ns.keep or tempfile.mkdtemp(prefix=f"tuneforge-example-{ns.method}-")).resolve()
    overrides = dict(_override(item) for item in ns.set)
    if ns.method == "ppo":
        return ppo_pipeline(ns, root, overrides)
    rows, valid_rows = DEFAULT_ROWS[ns.method]
    kind, train, valid, fmt = build(ns.method, ns.rows or rows, ns.valid_rows or valid_rows)
    job_id = f"ftjob-example-{ns.method}"
    hp = {**HYPERPARAMETERS[ns.method], **overrides, "max_steps": ns.steps, "checkpoint_every_steps": 0}
    spec = write_spec(root, job_id, kind, ns.model, fmt, train, valid, hp)
    code, first, last = run_job(root, spec, job_id)
    if code:
        return code
    report(ns.method, ns.model, len(train), len(valid), first, last, root / "store" / "jobs" / job_id / "model")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
