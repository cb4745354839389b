"""SFT throughput and peak memory: tuneforge's trainer vs TRL's SFTTrainer with plain defaults (packing=False).

Same base model, same GSM8K slice (chat format: question → user, answer → assistant), same LoRA, batch size,
learning rate, max_length and number of optimizer steps, same hardware, in one run. Each side runs in its own
process so peak memory is its own (GPU: ``torch.cuda.max_memory_allocated``; CPU: peak RSS).
Tokens/s = non-padding tokens trained / HF ``train_runtime`` (the training loop only, model loading excluded;
ours includes saving and uploading its final checkpoint).

    PYTHONPATH=service:operator:trainer_image HF_HUB_OFFLINE=1 python bench/trainer_sft.py --rows 96
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainer_bench_common import (
    BenchConfig,
    compare,
    load_gsm8k_chat,
    parse_args,
    run_child,
    run_ours,
)


def baseline_worker(cfg: BenchConfig, data_path: str) -> dict[str, Any]:
    """TRL SFTTrainer, plain defaults: the model given by path, TRL tokenizes, padded batches."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in Path(data_path).read_text().splitlines()]
    out = tempfile.mkdtemp(prefix="bench-trl-")
    # TRL defaults to bf16, which the CPU path rejects: on CPU the only change is to train in fp32
    cpu = {} if torch.cuda.is_available() else {"use_cpu": True, "bf16": False}
    args = SFTConfig(
        **cpu,
        output_dir=out,
        per_device_train_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        max_length=cfg.max_length,
        packing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=cfg.seed,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
    )
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.05, target_modules="all-linear")
    trainer = SFTTrainer(model=cfg.model_path, args=args, train_dataset=Dataset.from_list(rows), peft_config=lora)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    output = trainer.train()
    return {
        "tokens": int(trainer.state.num_input_tokens_seen),
        "train_runtime_s": float(output.metrics["train_runtime"]),
        "steps": int(trainer.state.global_step),
        "final_loss": float(output.metrics.get("train_loss", float("nan"))),
        "peak_gpu_memory_bytes": int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cfg, ns = parse_args(parser, default_rows=96, default_lr=2e-4)
    if ns.worker == "baseline":
        print("BENCH_RESULT " + json.dumps(baseline_worker(cfg, ns.data)), flush=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        rows = load_gsm8k_chat(cfg.rows)
        data = Path(tmp) / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        baseline = run_child([sys.executable, __file__, "--worker", "baseline", "--data", str(data), *ns.passthrough])
        ours = run_ours(cfg, Path(tmp), rows, method={"type": "supervised"}, fmt="chat")
    report = compare("sft", cfg, baseline, ours)
    if ns.out:
        Path(ns.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
