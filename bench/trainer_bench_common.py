"""Shared pieces of ``bench/trainer_sft.py`` and ``bench/trainer_dpo.py``: data, child processes, reporting."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TUNEFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
PYTHONPATH = os.pathsep.join(str(REPO / p) for p in ("service", "operator", "trainer_image"))


@dataclass
class BenchConfig:
    model: str
    model_path: str
    rows: int
    batch_size: int
    max_length: int
    epochs: int
    learning_rate: float
    lora_r: int
    seed: int
    beta: float


def parse_args(
    parser: argparse.ArgumentParser, *, default_rows: int, default_lr: float
) -> tuple[BenchConfig, argparse.Namespace]:
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="any base-model reference tuneforge takes")
    parser.add_argument("--rows", type=int, default=default_rows)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=default_lr)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--out", help="write the report as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    sys.path[:0] = [p for p in PYTHONPATH.split(os.pathsep) if p not in sys.path]
    model_path = ns.model_path
    if not model_path:
        from tuneforge.trainer.models import resolve_model

        model_path = str(resolve_model(ns.model))
    cfg = BenchConfig(
        model=ns.model,
        model_path=model_path,
        rows=ns.rows,
        batch_size=ns.batch_size,
        max_length=ns.max_length,
        epochs=ns.epochs,
        learning_rate=ns.learning_rate,
        lora_r=ns.lora_r,
        seed=ns.seed,
        beta=ns.beta,
    )
    ns.passthrough = [
        "--model-path", model_path, "--rows", str(cfg.rows), "--batch-size", str(cfg.batch_size),
        "--max-length", str(cfg.max_length), "--epochs", str(cfg.epochs),
        "--learning-rate", str(cfg.learning_rate), "--lora-r", str(cfg.lora_r), "--seed", str(cfg.seed),
        "--beta", str(cfg.beta),
    ]  # fmt: skip
    return cfg, ns


def load_gsm8k_chat(n: int, data_dir: Path | None = None) -> list[dict[str, Any]]:
    """The first ``n`` GSM8K train rows as chat rows (question → user, answer → assistant)."""
    rows = []
    with open((data_dir or DATA) / "gsm8k" / "train.jsonl") as fh:
        for line in fh:
            item = json.loads(line)
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": item["question"]},
                        {"role": "assistant", "content": item["answer"]},
                    ]
                }
            )
            if len(rows) >= n:
                break
    return rows


def load_hh_pairs(n: int, offset: int = 0, data_dir: Path | None = None) -> list[dict[str, Any]]:
    """HH-RLHF harmless-base dialogues as preference rows (shared prompt, last assistant turns differ)."""
    from tuneforge.contracts.datasets import InvalidLine, hh_rlhf_to_preference

    rows = []
    with gzip.open((data_dir or DATA) / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt") as fh:
        for i, line in enumerate(fh):
            if i < offset:
                continue
            item = json.loads(line)
            try:
                rows.append(hh_rlhf_to_preference(item["chosen"], item["rejected"]))
            except InvalidLine:
                continue
            if len(rows) >= n:
                break
    return rows


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one side; returns its BENCH_RESULT (or result event) plus the child's own peak RSS."""
    full_env = dict(os.environ, PYTHONPATH=PYTHONPATH, HF_HUB_OFFLINE="1", **(env or {}))
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(err[-5000:])
        raise SystemExit(f"benchmark child failed ({proc.returncode}): {' '.join(cmd[:4])}")
    result: dict[str, Any] | None = None
    for line in out.splitlines():
        if line.startswith("BENCH_RESULT "):
            result = json.loads(line[len("BENCH_RESULT ") :])
        elif line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                continue  # HF's printed log dicts
            if event.get("kind") == "result":
                data = event["data"]
                result = {
                    "tokens": data["trained_tokens"],
                    "train_runtime_s": data["train_runtime_s"],
                    "steps": data["steps"],
                    "final_loss": data["metrics"].get("train_loss"),
                    "peak_gpu_memory_bytes": data.get("peak_gpu_memory_bytes"),
                }
            elif event.get("kind") == "log" and event["message"].startswith("Training setup"):
                print(f"  ours: {event['message']}", file=sys.stderr)
    if result is None:
        raise SystemExit(f"benchmark child printed no result: {out[-2000:]}")
    result["peak_rss_bytes"] = usage.ru_maxrss * 1024
    return result


def run_ours(
    cfg: BenchConfig,
    tmp: Path,
    rows: list[dict[str, Any]],
    *,
    method: dict[str, Any],
    fmt: str,
    extra_hp: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec = bench_job_spec(
        store=tmp / "store",
        rows=rows,
        method=method,
        fmt=fmt,
        model_path=cfg.model_path,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        max_length=cfg.max_length,
        adapter={"type": "lora", "r": cfg.lora_r, "alpha": 2 * cfg.lora_r, "dropout": 0.05},
        seed=cfg.seed,
        extra_hp=extra_hp,
    )
    spec_path = tmp / "spec.json"
    spec_path.write_text(json.dumps(spec))
    return run_child([sys.executable, "-m", "tuneforge.trainer", "--spec", str(spec_path)], env=env)


def bench_job_spec(
    *,
    store: Path,
    rows: list[dict[str, Any]],
    method: dict[str, Any],
    fmt: str,
    model_path: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    max_length: int,
    adapter: dict[str, Any],
    seed: int,
    extra_hp: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JobSpec (as JSON data) of one benchmark run, with its training file written into a local store.

    The only place the benchmarks build a JobSpec (bench/trainer_*.py and bench/gpu/): adapt it here when the
    contract changes. No warm-up, no intermediate checkpoints: the runs measure training steps.
    """
    (store / "files").mkdir(parents=True, exist_ok=True)
    (store / "files" / "file-bench").write_text("".join(json.dumps(r) + "\n" for r in rows))
    hp = {
        "n_epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "max_length": max_length,
        "warmup_ratio": 0.0,
        "checkpoint_every_steps": 0,
        **(extra_hp or {}),
    }
    return {
        "job_id": "ftjob-bench",
        "tenant_id": "bench",
        "method": method,
        "base_model": model_path,
        "training_file": {"file_id": "file-bench", "key": "files/file-bench", "format": fmt, "rows": len(rows)},
        "hyperparameters": hp,
        "adapter": adapter,
        "storage_url": store.as_uri(),
        "output_prefix": "jobs/ftjob-bench",
        "seed": seed,
    }


def _tps(side: dict[str, Any]) -> float:
    return float(side["tokens"]) / max(1e-9, float(side["train_runtime_s"]))


def _peak(side: dict[str, Any]) -> tuple[str, float]:
    if side.get("peak_gpu_memory_bytes"):
        return "GPU", float(side["peak_gpu_memory_bytes"])
    return "RSS", float(side["peak_rss_bytes"])


def compare(name: str, cfg: BenchConfig, baseline: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu x{os.cpu_count()}"
    kind, base_mem = _peak(baseline)
    _, our_mem = _peak(ours)
    report = {
        "benchmark": name,
        "device": device,
        "config": asdict(cfg),
        "baseline": {**baseline, "tokens_per_second": round(_tps(baseline), 2)},
        "ours": {**ours, "tokens_per_second": round(_tps(ours), 2)},
        "tokens_per_second_ratio": round(_tps(ours) / _tps(baseline), 3),
        "peak_memory_kind": kind,
        "peak_memory_ratio": round(our_mem / base_mem, 3),
    }
    print(f"\n{name} benchmark on {device}: model {cfg.model}, {cfg.rows} rows, batch {cfg.batch_size}, "
          f"max_length {cfg.max_length}, LoRA r={cfg.lora_r}")  # fmt: skip
    print(f"{'':10}{'steps':>6}{'tokens':>9}{'time s':>9}{'tokens/s':>10}{'peak ' + kind + ' MiB':>16}")
    for label, side in (("TRL", baseline), ("tuneforge", ours)):
        mem = _peak(side)[1] / 2**20
        print(f"{label:10}{side['steps']:>6}{side['tokens']:>9}{side['train_runtime_s']:>9.1f}{_tps(side):>10.1f}"
              f"{mem:>16.0f}")  # fmt: skip
    print(f"tokens/s ratio (tuneforge / TRL): {report['tokens_per_second_ratio']:.2f}x; "
          f"peak {kind} memory ratio: {report['peak_memory_ratio']:.2f}x")  # fmt: skip
    return report
