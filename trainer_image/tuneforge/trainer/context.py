"""What every method needs to build its TRL trainer: the spec, the store, the device and shared arguments."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.contracts.hyperparameters import AUTO, _Hyperparameters
from tuneforge.contracts.jobspec import JobSpec
from tuneforge.storage import ObjectStore
from tuneforge.trainer.device import DeviceInfo, has_module
from tuneforge.trainer.errors import BadInput
from tuneforge.trainer.launch import distributed_training_args
from tuneforge.trainer.preempt import PreemptFlag
from tuneforge.trainer.progress import ProgressReporter
from tuneforge.trainer.settings import trainer_settings

#: save/eval interval meaning "only at the end" (the final step always saves and evaluates)
AT_END_ONLY = 10**9


@dataclass
class BuiltTrainer:
    """What a method's ``build`` returns: a ready HF/TRL trainer and how to save its result."""

    trainer: Any
    tokenizer: Any
    #: forward+backward FLOPs per trained token (6N), for MFU
    flops_per_token: float | None
    #: extra fields for ``manifest.json`` (e.g. ``task``)
    manifest_extra: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        self.trainer.save_model(str(directory))
        self.tokenizer.save_pretrained(str(directory))


@dataclass
class RunContext:
    spec: JobSpec
    store: ObjectStore
    reporter: ProgressReporter
    preempt: PreemptFlag
    device: DeviceInfo
    workdir: Path
    model_dir: Path
    #: canonical rows of the training file and its format (``tuneforge.contracts.datasets``)
    train_format: str = ""
    train_rows: list[dict[str, Any]] = field(default_factory=list)
    valid_format: str | None = None
    valid_rows: list[dict[str, Any]] | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def hp(self) -> Any:
        return self.spec.hyperparameters


def logging_steps(total_steps: int) -> int:
    return 1 if total_steps <= 100 else math.ceil(total_steps / 100)


def estimate_total_steps(spec: JobSpec, rows: int) -> int:
    hp = spec.hyperparameters
    if hp.max_steps and hp.max_steps > 0:
        return int(hp.max_steps)
    # int(): resolved numbers in every JobSpec (the union type also allows "auto")
    per_epoch = math.ceil(max(1, rows) / (int(hp.batch_size) * max(1, hp.gradient_accumulation_steps)))
    return per_epoch * int(hp.n_epochs)


def use_gradient_checkpointing(hp: _Hyperparameters, device: DeviceInfo) -> bool:
    """The job's explicit true/false; for "auto" (None) on where memory limits the batch, i.e. on CUDA.

    On the CPU memory is plentiful and the recomputation would cost ~30% speed, so auto is off there (the device
    module knows only ``cuda`` and ``cpu``; any other kind counts as not CUDA)."""
    if hp.gradient_checkpointing != AUTO:
        return bool(hp.gradient_checkpointing)
    return device.cuda


def describe_gradient_checkpointing(hp: _Hyperparameters, device: DeviceInfo) -> str:
    """``on``/``off``, with `` (auto)`` when the trainer chose it, for the "Training setup" line."""
    state = "on" if use_gradient_checkpointing(hp, device) else "off"
    return f"{state} (auto)" if hp.gradient_checkpointing == AUTO else state


def training_args_kwargs(ctx: RunContext, *, rows: int, has_eval: bool) -> dict[str, Any]:
    """Arguments shared by every TRL config (they all extend ``TrainingArguments``)."""
    hp = ctx.hp
    total = estimate_total_steps(ctx.spec, rows)
    checkpointing = use_gradient_checkpointing(hp, ctx.device)
    save_steps = hp.checkpoint_every_steps if hp.checkpoint_every_steps > 0 else AT_END_ONLY
    eval_steps = hp.eval_every_steps if hp.eval_every_steps > 0 else save_steps
    kwargs: dict[str, Any] = {
        "output_dir": str(ctx.workdir / "hf"),
        "num_train_epochs": hp.n_epochs,
        "max_steps": hp.max_steps if hp.max_steps and hp.max_steps > 0 else -1,
        "per_device_train_batch_size": hp.batch_size,
        "per_device_eval_batch_size": hp.batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "learning_rate": hp.learning_rate,
        "weight_decay": hp.weight_decay,
        "warmup_steps": float(hp.warmup_ratio) if hp.warmup_ratio < 1 else int(hp.warmup_ratio),
        "lr_scheduler_type": hp.lr_scheduler,
        "logging_strategy": "steps",
        "logging_steps": logging_steps(total),
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": save_steps,
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": eval_steps if has_eval else None,
        "seed": ctx.spec.seed,
        "data_seed": ctx.spec.seed,
        "bf16": ctx.device.bf16,
        "fp16": ctx.device.fp16,
        "use_cpu": not ctx.device.cuda,
        "report_to": "none",
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
        "gradient_checkpointing": checkpointing,
        "dataloader_num_workers": 0,
        "save_total_limit": None,
    }
    if checkpointing:
        kwargs["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    # Liger's Triton kernels (fused RMSNorm/RoPE/SwiGLU, linear+cross-entropy) whenever they are installed on CUDA;
    # TUNEFORGE_LIGER=0 turns them off and TUNEFORGE_TORCH_COMPILE=1 compiles the model (benchmarks measure each)
    liger = ctx.device.cuda and has_module("liger_kernel") and trainer_settings().liger is not False
    if liger:
        kwargs["use_liger_kernel"] = True
    if trainer_settings().torch_compile:
        kwargs["torch_compile"] = True
        ctx.notes["torch_compile"] = True
    if ctx.device.cuda:
        ctx.notes["liger"] = liger
    kwargs.update(distributed_training_args(cuda=ctx.device.cuda))
    return kwargs


def lora_config(ctx: RunContext, task_type: str) -> Any:
    """PEFT LoRA config from the spec's adapter, or None for full fine-tuning."""
    adapter = ctx.spec.adapter
    if adapter.type == "full":
        return None
    from peft import LoraConfig

    if adapter.r < 1 or adapter.alpha < 1:
        raise BadInput("adapter rank and alpha must be positive")
    kwargs: dict[str, Any] = {}
    if task_type == "SEQ_CLS":
        kwargs["modules_to_save"] = ["score"]
    return LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=adapter.target_modules,
        task_type=task_type,
        **kwargs,
    )


def count_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def quantization_config(ctx: RunContext) -> Any:
    """4-bit NF4 for QLoRA when CUDA and bitsandbytes are present; otherwise None (plain LoRA, warned)."""
    if ctx.spec.adapter.type != "qlora":
        return None
    if not (ctx.device.cuda and has_module("bitsandbytes")):
        ctx.reporter.warn("QLoRA needs CUDA and bitsandbytes; training a plain LoRA adapter instead")
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if ctx.device.bf16 else torch.float16,
    )
