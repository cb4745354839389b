"""SFT and DPO runs, TRL's plain defaults vs tuneforge's trainer, and the trainer's GPU options one at a time.

Both sides train the same model directory on the same rows with the same adapter, batch size, max_length and
number of optimizer steps. TRL gets the model by path and its configs' defaults (``packing=False``; on the CPU
``use_cpu=True, bf16=False``, because TRL's bf16 default refuses to run there); tuneforge runs a JobSpec
through its runner, in this process, exactly as ``python -m tuneforge.trainer`` would.

Timing: both sides are clocked at the same instant, every logged step (``on_log``, right after the trainer
has synchronised on the step's loss), with the side's own count of non-padding tokens. ``tokens_per_second``
is the steady state: tokens between the end of step ``warmup_steps`` and the last step, over that time (so
CUDA, cuBLAS and Triton warm-up and torch.compile's compilation stay out); ``tokens_per_second_hf`` is tokens
over HF's ``train_runtime`` (the whole loop). Peak memory: ``torch.cuda.max_memory_allocated`` from just before
the model is loaded to the end of training (reset between configurations).
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.gpu.models import mean_attended_context, model_dir, train_flops_per_token
from bench.gpu.plan import GPU_ONLY_OPTIONS, Plan, TrainSize
from bench.trainer_bench_common import bench_job_spec, load_gsm8k_chat, load_hh_pairs

LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
DPO_BETA = 0.1
SEED = 42


class StepClock:
    """``(step, tokens, seconds)`` at every logged optimizer step."""

    def __init__(self) -> None:
        self.points: list[tuple[int, int, float]] = []

    def mark(self, step: int, tokens: int) -> None:
        self.points.append((int(step), int(tokens), time.perf_counter()))

    def steady_tokens_per_second(self, warmup_steps: int) -> float | None:
        points = [p for p in self.points if p[1] > 0]
        if len(points) < 2:
            return None
        base = next((p for p in points if p[0] >= warmup_steps), points[0])
        if base is points[-1]:
            base = points[0]
        last = points[-1]
        if last[2] <= base[2] or last[1] <= base[1]:
            return None
        return (last[1] - base[1]) / (last[2] - base[2])


class _EventStream(io.TextIOBase):
    """tuneforge's progress events (JSON lines, as its reporter prints them without a service), clocked."""

    def __init__(self, clock: StepClock) -> None:
        super().__init__()
        self.clock = clock
        self.setup = ""
        self.warnings: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        for line in text.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            data = event.get("data") or {}
            if event.get("kind") == "metrics" and "train_loss" in data:
                self.clock.mark(data.get("step", 0), data.get("trained_tokens", 0))
            elif event.get("kind") == "log":
                if event.get("message", "").startswith("Training setup"):
                    self.setup = event["message"]
                elif event.get("level") == "warn":
                    self.warnings.append(event["message"])
        return len(text)


@contextlib.contextmanager
def environment(overrides: dict[str, str]) -> Iterator[None]:
    """The trainer's settings for an in-process run: its TUNEFORGE_* variables, read afresh (the trainer caches
    them once per process, which a benchmark running several configurations in one process is not)."""
    from tuneforge.trainer.settings import trainer_settings

    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    trainer_settings.cache_clear()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        trainer_settings.cache_clear()


def cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def peak_flops() -> tuple[float | None, str]:
    """The device's dense bf16 peak for MFU, from the trainer's own table (H200: 989 TFLOP/s, NVIDIA's spec)."""
    from tuneforge.trainer.device import detect_device

    device = detect_device()
    if device.peak_flops is None:
        return None, f"no peak known for {device.name}"
    return device.peak_flops, f"{device.name}: dense bf16 spec, tuneforge.trainer.device.PEAK_FLOPS"


def _reset_memory() -> int:
    gc.collect()
    if not cuda():
        return 0
    import torch

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return int(torch.cuda.memory_allocated())


def _peak_memory() -> int | None:
    if not cuda():
        return None
    import torch

    return int(torch.cuda.max_memory_allocated())


#: room left under max_length for what each side's tokenization adds to the chat template's tokens
LENGTH_MARGIN = 8


def select_rows(method: str, n: int, data_dir: Path, tokenizer_dir: Path, max_length: int
                ) -> tuple[list[dict[str, Any]], list[int]]:
    """The first ``n`` rows whose sequences fit ``max_length`` whole, and those sequences' token lengths.

    Both sides then train exactly the same tokens: nothing is truncated (TRL would drop a preference pair whose
    prompt fills max_length where tuneforge drops the prompt's oldest turns, and the two would train different
    rows). DPO rows make two sequences each: prompt+chosen and prompt+rejected.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    source = load_gsm8k_chat(10**9, data_dir) if method == "sft" else load_hh_pairs(10**9, data_dir=data_dir)
    rows: list[dict[str, Any]] = []
    lengths: list[int] = []
    for row in source:
        convos = [row["messages"]] if method == "sft" else [row["prompt"] + row[k] for k in ("chosen", "rejected")]
        sizes = [len(tokenizer.apply_chat_template(c, tokenize=True, return_dict=False)) for c in convos]
        if max(sizes) <= max_length - LENGTH_MARGIN:
            rows.append(row)
            lengths += sizes
            if len(rows) == n:
                return rows, lengths
    raise RuntimeError(f"{data_dir} holds {len(rows)} {method} rows that fit {max_length} tokens, the plan needs "
                       f"{n}: stage more data")


# -- the two sides --


def _trl_callback(clock: StepClock) -> Any:
    from transformers import TrainerCallback

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                clock.mark(state.global_step, int(state.num_input_tokens_seen or logs.get("num_tokens") or 0))

    return Clock()


def train_trl(method: str, model_path: Path, rows: list[dict[str, Any]], size: TrainSize, adapter: str,
              clock: StepClock, tmp: Path) -> dict[str, Any]:
    """TRL's SFTTrainer/DPOTrainer at its plain defaults, the model given by path (TRL loads it)."""
    from datasets import Dataset
    from peft import LoraConfig

    common: dict[str, Any] = {
        "output_dir": str(tmp / "trl"),
        "per_device_train_batch_size": size.batch_size,
        "num_train_epochs": 1,
        "learning_rate": size.lr[adapter],
        "max_length": size.max_length,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": SEED,
        "include_num_input_tokens_seen": "non_padding",
        "disable_tqdm": True,
    }
    if not cuda():
        common.update(use_cpu=True, bf16=False)
    if method == "sft":
        from trl import SFTConfig, SFTTrainer

        args: Any = SFTConfig(**common, packing=False)
        trainer_cls: Any = SFTTrainer
    else:
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, beta=DPO_BETA)
        trainer_cls = DPOTrainer
    lora = None
    if adapter == "lora":
        lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                          target_modules="all-linear")
    trainer = trainer_cls(model=str(model_path), args=args, train_dataset=Dataset.from_list(rows), peft_config=lora)
    trainer.add_callback(_trl_callback(clock))
    try:
        output = trainer.train()
        return {
            "tokens": int(trainer.state.num_input_tokens_seen),
            "train_runtime_s": float(output.metrics["train_runtime"]),
            "steps": int(trainer.state.global_step),
            "final_loss": float(output.metrics.get("train_loss", float("nan"))),
            "setup": f"TRL {type(trainer).__name__}: gradient_checkpointing={args.gradient_checkpointing}, "
                     f"bf16={args.bf16}, padding_free={getattr(args, 'padding_free', None)}, "
                     f"use_liger_kernel={args.use_liger_kernel}",
        }
    finally:
        with contextlib.suppress(Exception):
            trainer.accelerator.free_memory()
        del trainer


def train_tuneforge(method: str, model_path: Path, rows: list[dict[str, Any]], size: TrainSize, adapter: str,
                    clock: StepClock, tmp: Path, *, env: dict[str, str] | None = None,
                    extra_hp: dict[str, Any] | None = None) -> dict[str, Any]:
    """tuneforge's runner on a JobSpec (the same code ``python -m tuneforge.trainer`` runs), in this process."""
    from tuneforge.contracts.jobspec import JobSpec
    from tuneforge.trainer.preempt import PreemptFlag
    from tuneforge.trainer.progress import ProgressReporter
    from tuneforge.trainer.runner import run

    hp = dict(extra_hp or {})
    if method == "dpo":
        hp.setdefault("beta", DPO_BETA)
    spec = JobSpec.model_validate(bench_job_spec(
        store=tmp / "store",
        rows=rows,
        method={"type": "supervised" if method == "sft" else "dpo"},
        fmt="chat" if method == "sft" else "preference",
        model_path=str(model_path),
        epochs=1,
        batch_size=size.batch_size,
        learning_rate=size.lr[adapter],
        max_length=size.max_length,
        adapter={"type": "lora", **LORA} if adapter == "lora" else {"type": "full"},
        seed=SEED,
        extra_hp=hp,
    ))
    events = _EventStream(clock)
    reporter = ProgressReporter(spec.job_id, None, stream=events, log=sys.stderr)
    with environment({"TUNEFORGE_WORKDIR": str(tmp / "work"), "TUNEFORGE_SKIP_BASELINE_EVAL": "1", **(env or {})}):
        result = run(spec, reporter, PreemptFlag())
    return {
        "tokens": int(result["trained_tokens"]),
        "train_runtime_s": float(result["train_runtime_s"]),
        "steps": int(result["steps"]),
        "final_loss": result["metrics"].get("train_loss"),
        "setup": events.setup,
        "warnings": events.warnings[:5],
    }


def measure(side: str, method: str, model: str, size: TrainSize, adapter: str, *, plan: Plan, data_dir: Path,
            tokenizer_dir: Path, work: Path, env: dict[str, str] | None = None,
            extra_hp: dict[str, Any] | None = None) -> dict[str, Any]:
    """One training run of one side, with its throughput, MFU and peak memory."""
    path = model_dir(work, model)
    if not (path / "config.json").is_file():
        raise RuntimeError(f"model {model} was not built (see the models result)")
    rows, lengths = select_rows(method, size.rows(), data_dir, tokenizer_dir, size.max_length)
    config = json.loads((path / "config.json").read_text())
    context = mean_attended_context(lengths)
    flops = train_flops_per_token(config, context, method=method, adapter=adapter)
    resident = _reset_memory()
    clock = StepClock()
    tmp = Path(tempfile.mkdtemp(prefix=f"{method}-{side}-", dir=work))
    start = time.perf_counter()
    fallback = None
    try:
        if side == "trl":
            out = train_trl(method, path, rows, size, adapter, clock, tmp)
        else:
            try:
                out = train_tuneforge(method, path, rows, size, adapter, clock, tmp, env=env, extra_hp=extra_hp)
            except Exception as exc:
                if not _liger_in_play(env):
                    raise
                # Liger is the one part not exercised by the CPU dry run: a failure there costs only its own gain
                fallback = f"failed with Liger, measured without it: {type(exc).__name__}: {exc}"[:2000]
                print(f"tuneforge {method} {model} {adapter}: {fallback}", file=sys.stderr, flush=True)
                resident = _reset_memory()
                clock.points.clear()
                shutil.rmtree(tmp, ignore_errors=True)
                start = time.perf_counter()
                out = train_tuneforge(method, path, rows, size, adapter, clock, tmp,
                                      env={**(env or {}), "TUNEFORGE_LIGER": "0"}, extra_hp=extra_hp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - start
    peak = _peak_memory()
    tps = clock.steady_tokens_per_second(plan.warmup_steps)
    tps_hf = out["tokens"] / out["train_runtime_s"] if out["train_runtime_s"] else None
    peak_flops_value, _ = peak_flops()
    result = {
        **out,
        "side": side, "method": method, "model": model, "adapter": adapter,
        "batch_size": size.batch_size, "max_length": size.max_length, "rows": len(rows),
        "tokens_per_second": round(tps, 1) if tps else None,
        "tokens_per_second_hf": round(tps_hf, 1) if tps_hf else None,
        "warmup_steps_excluded": plan.warmup_steps,
        "step_clock": clock.points,
        "flops_per_token": flops,
        "mean_attended_context": round(context, 1),
        "mfu": round(tps * flops / peak_flops_value, 4) if tps and peak_flops_value else None,
        "peak_memory_bytes": peak,
        "resident_before_bytes": resident,
        "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "wall_s": round(wall, 2),
    }
    if fallback:
        result["liger_fallback"] = fallback
    _reset_memory()
    return result


def _liger_in_play(env: dict[str, str] | None) -> bool:
    """Whether tuneforge's trainer used Liger of its own accord (CUDA, Liger installed, the run not choosing):
    the options check chooses, and its "liger" variant must not fall back."""
    import importlib.util

    if "TUNEFORGE_LIGER" in (env or {}) or "TUNEFORGE_LIGER" in os.environ:
        return False
    return cuda() and importlib.util.find_spec("liger_kernel") is not None


# -- units --


def run_training_unit(args: dict[str, Any], plan: Plan, emit: Any, **paths: Path) -> None:
    method, side = args["method"], args["side"]
    for model, adapter in args["configs"]:
        name = plan.train_item(method, model, adapter, side)
        emit(name, lambda m=model, a=adapter: measure(side, method, m, plan.train[method][m], a, plan=plan, **paths))


#: what each option variant changes, on top of "plain" (padded batches, no Liger, no checkpointing, no compile)
PLAIN_ENV = {"TUNEFORGE_PADDING_FREE": "0", "TUNEFORGE_LIGER": "0", "TUNEFORGE_TORCH_COMPILE": "0"}
VARIANTS: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    "plain": ({}, {}),
    "padding_free": ({"TUNEFORGE_PADDING_FREE": "1"}, {}),
    "gradient_checkpointing": ({}, {"gradient_checkpointing": True}),
    "liger": ({"TUNEFORGE_LIGER": "1"}, {}),
    "torch_compile": ({"TUNEFORGE_TORCH_COMPILE": "1"}, {}),
}


def run_options_unit(args: dict[str, Any], plan: Plan, emit: Any, skip: Any, **paths: Path) -> None:
    for variant in args["variants"]:
        if variant in GPU_ONLY_OPTIONS and (plan.dry_run or not cuda()):  # the dry run imports no torch for these
            skip(variant, GPU_ONLY_OPTIONS[variant])
            continue
        env_extra, hp = VARIANTS[variant]
        env = {**PLAIN_ENV, **env_extra}
        hp = {"gradient_checkpointing": False, **hp}
        emit(variant, lambda e=env, h=hp, v=variant: {
            "variant": v,
            **measure("tuneforge", "sft", plan.options_model, plan.options_size, "lora", plan=plan, env=e,
                      extra_hp=h, **paths),
        })
