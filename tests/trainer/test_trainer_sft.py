"""Supervised fine-tuning end to end: JobSpec → trainer process → adapter, manifest, checkpoints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.trainer.trainer_helpers import chat_rows, run_trainer


def test_sft_lora_end_to_end(make_job, tiny_model: Path) -> None:
    job = make_job(
        chat_rows(24),
        validation=chat_rows(6, seed=1),
        hyperparameters={"n_epochs": 2, "batch_size": 4, "checkpoint_every_steps": 4, "keep_checkpoints": 1},
    )
    result = run_trainer(job)
    assert result.returncode == 0, result.stderr[-3000:]

    status = result.of("status")
    running = [e for e in status if e["data"].get("phase") == "running"]
    assert running and running[0]["data"]["total_steps"] == 12

    seqs = [e["seq"] for e in result.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    train_metrics = [e["data"] for e in result.of("metrics") if "train_loss" in e["data"]]
    assert [m["step"] for m in train_metrics] == list(range(1, 13))
    for m in train_metrics:
        assert m["total_steps"] == 12
        for key in ("learning_rate", "tokens_per_second", "eta_seconds", "epoch"):
            assert key in m, key
    valid = [e["data"] for e in result.of("metrics") if "valid_loss" in e["data"]]
    assert [m["step"] for m in valid] == [0, 4, 8, 12]  # step 0: the base model, before training

    checkpoints = result.of("checkpoint")
    assert [c["data"]["step"] for c in checkpoints] == [4, 8, 12]
    for c in checkpoints:
        assert c["data"]["prefix"] == f"jobs/ftjob-test/checkpoints/step-{c['data']['step']}"
        assert {"train_loss", "valid_loss"} <= set(c["data"]["metrics"])

    # retention: the last one plus the best by validation loss survive, each marked complete
    kept = sorted(p.name for p in (job.job_dir / "checkpoints").iterdir())
    best = min(checkpoints, key=lambda c: c["data"]["metrics"]["valid_loss"])["data"]["step"]
    assert set(kept) == {"step-12", f"step-{best}"}
    for name in kept:
        assert (job.job_dir / "checkpoints" / name / "COMPLETE.json").is_file()

    (res,) = result.of("result")
    data = res["data"]
    assert data["model_prefix"] == "jobs/ftjob-test/model"
    assert data["trained_tokens"] == train_metrics[-1]["trained_tokens"] > 0
    model_dir = job.job_dir / "model"
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "manifest.json"} <= set(data["files"])
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["job_id"] == "ftjob-test" and manifest["adapter"] == "lora"
    assert manifest["base_model"] == str(tiny_model)
    for entry in manifest["files"]:
        blob = (model_dir / entry["name"]).read_bytes()
        assert len(blob) == entry["bytes"]
        assert hashlib.sha256(blob).hexdigest() == entry["sha256"]
    assert not list(model_dir.glob("*.bin"))

    metrics_lines = (job.job_dir / "metrics.jsonl").read_text().splitlines()
    assert len(metrics_lines) == len(result.of("metrics"))

    # the adapter loads with PEFT on the base model and generates
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    model = PeftModel.from_pretrained(base, str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 3?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_sft_full_prompt_completion(make_job) -> None:
    rows = [{"prompt": f"Q{i}: say {i}\nA:", "completion": f" {i}"} for i in range(8)]
    # an explicit gradient_checkpointing wins over the device's "auto" (off on the CPU) and really trains
    job = make_job(rows, fmt="prompt_completion", adapter={"type": "full"},
                   hyperparameters={"max_steps": 2, "gradient_checkpointing": True})
    result = run_trainer(job)
    assert result.returncode == 0, result.stderr[-3000:]
    (setup,) = [e["message"] for e in result.of("log") if e["message"].startswith("Training setup")]
    assert "gradient_checkpointing=on," in setup, setup
    (res,) = result.of("result")
    assert res["data"]["steps"] == 2
    assert "model.safetensors" in res["data"]["files"] and "config.json" in res["data"]["files"]
    assert json.loads((job.job_dir / "model" / "manifest.json").read_text())["adapter"] == "full"
