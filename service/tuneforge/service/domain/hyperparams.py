"""Resolve ``"auto"`` hyperparameters from the data set and build the immutable JobSpec."""

from __future__ import annotations

import math
from typing import Any

from tuneforge.contracts.jobspec import Hyperparameters

#: base learning rates the multiplier scales (LoRA learns at a much higher rate than full tuning)
BASE_LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}
METHOD_BASE_LR = {"dpo": 5e-6, "reinforcement": 1e-6, "reward_model": 1e-5}
TARGET_STEPS = 200  # aim for about this many optimizer steps when epochs are "auto"


class HyperparameterError(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _is_auto(value: Any) -> bool:
    return value is None or value == "auto"


def _number(raw: dict[str, Any], name: str, kind: type, lo: float, hi: float, prefix: str) -> Any:
    value = raw.get(name)
    if _is_auto(value):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HyperparameterError(f"'{name}' must be a number or \"auto\", got {value!r}", f"{prefix}.{name}")
    if kind is int and not float(value).is_integer():
        raise HyperparameterError(f"'{name}' must be an integer, got {value!r}", f"{prefix}.{name}")
    if not lo <= value <= hi:
        raise HyperparameterError(f"'{name}' must be between {lo} and {hi}, got {value!r}", f"{prefix}.{name}")
    return kind(value)


#: learning-rate schedules the trainer passes to transformers (those that need no extra arguments)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")


def _optional_flag(raw: dict[str, Any], name: str, prefix: str) -> bool | None:
    """true/false as given; absent or ``"auto"`` is None (left for the trainer to decide)."""
    value = raw.get(name)
    if _is_auto(value):
        return None
    if not isinstance(value, bool):
        raise HyperparameterError(f"'{name}' must be true, false or \"auto\", got {value!r}", f"{prefix}.{name}")
    return value


def _flag(raw: dict[str, Any], name: str, prefix: str) -> bool:
    return bool(_optional_flag(raw, name, prefix))


#: hyperparameters whose "auto" depends on the device, so the trainer resolves them (None in the JobSpec)
TRAINER_RESOLVED = ("gradient_checkpointing",)


def _scheduler(raw: dict[str, Any], prefix: str) -> str:
    value = raw.get("lr_scheduler")
    if _is_auto(value):
        return "linear"
    if value not in LR_SCHEDULERS:
        raise HyperparameterError(f"'lr_scheduler' must be one of {', '.join(LR_SCHEDULERS)}, got {value!r}",
                                  f"{prefix}.lr_scheduler")
    return str(value)


KNOWN = {
    "n_epochs", "batch_size", "learning_rate_multiplier", "learning_rate", "max_length", "warmup_ratio",
    "weight_decay", "lr_scheduler", "packing", "gradient_checkpointing", "max_steps", "checkpoint_every_steps",
    "keep_checkpoints", "eval_every_steps", "gradient_accumulation_steps", "beta", "loss_type", "kl_coef",
    "num_generations", "max_completion_length", "temperature", "reasoning_effort", "compute_multiplier",
}


def resolve(
    raw: dict[str, Any], *, method: str, adapter: str, rows: int, prefix: str = "hyperparameters"
) -> Hyperparameters:
    unknown = sorted(set(raw) - KNOWN)
    if unknown:
        raise HyperparameterError(f"unknown hyperparameter '{unknown[0]}'", f"{prefix}.{unknown[0]}")
    n_epochs = _number(raw, "n_epochs", int, 1, 50, prefix)
    batch_size = _number(raw, "batch_size", int, 1, 256, prefix)
    multiplier = _number(raw, "learning_rate_multiplier", float, 1e-3, 100, prefix)
    lr = _number(raw, "learning_rate", float, 1e-9, 1.0, prefix)
    max_length = _number(raw, "max_length", int, 16, 131072, prefix) or 1024
    max_steps = _number(raw, "max_steps", int, 1, 10_000_000, prefix) or -1

    if batch_size is None:
        # small data sets get small batches so they still see enough optimizer steps
        batch_size = max(1, min(8, rows // 16 or 1))
    steps_per_epoch = max(1, math.ceil(rows / batch_size))
    if n_epochs is None:
        n_epochs = max(1, min(10, math.ceil(TARGET_STEPS / steps_per_epoch))) if rows < 2000 else 1
        if method in ("reinforcement", "dpo", "reward_model"):
            n_epochs = 1 if rows >= 64 else min(3, n_epochs)
    multiplier = multiplier if multiplier is not None else 1.0
    base = METHOD_BASE_LR.get(method, BASE_LR.get(adapter, 2e-4))
    if method in ("dpo", "reinforcement", "reward_model") and adapter != "full":
        base *= 10  # LoRA tolerates (and needs) larger steps than full tuning
    learning_rate = lr if lr is not None else base * multiplier
    total_steps = max_steps if max_steps > 0 else steps_per_epoch * n_epochs
    checkpoint_every = _number(raw, "checkpoint_every_steps", int, 0, 10_000_000, prefix)
    if checkpoint_every is None:
        checkpoint_every = max(10, total_steps // 5)

    extra: dict[str, Any] = {}
    if method in ("dpo",):
        extra["beta"] = _number(raw, "beta", float, 1e-4, 100, prefix) or 0.1
        extra["loss_type"] = raw.get("loss_type") if not _is_auto(raw.get("loss_type")) else "sigmoid"
    if method == "reinforcement":
        extra["kl_coef"] = _number(raw, "kl_coef", float, 0, 100, prefix)
        if extra["kl_coef"] is None:
            extra["kl_coef"] = 0.0
        extra["num_generations"] = _number(raw, "num_generations", int, 2, 64, prefix) or 4
        extra["max_completion_length"] = _number(raw, "max_completion_length", int, 1, 32768, prefix) or 256
        extra["temperature"] = _number(raw, "temperature", float, 0.01, 5, prefix) or 1.0

    return Hyperparameters(
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        learning_rate_multiplier=multiplier,
        gradient_accumulation_steps=_number(raw, "gradient_accumulation_steps", int, 1, 1024, prefix) or 1,
        max_length=max_length,
        warmup_ratio=_number(raw, "warmup_ratio", float, 0, 0.5, prefix) if not _is_auto(raw.get("warmup_ratio"))
        else 0.03,
        weight_decay=_number(raw, "weight_decay", float, 0, 1, prefix) or 0.0,
        lr_scheduler=_scheduler(raw, prefix),
        packing=_flag(raw, "packing", prefix),
        gradient_checkpointing=_optional_flag(raw, "gradient_checkpointing", prefix),
        max_steps=max_steps,
        checkpoint_every_steps=checkpoint_every,
        keep_checkpoints=_number(raw, "keep_checkpoints", int, 1, 100, prefix) or 2,
        eval_every_steps=_number(raw, "eval_every_steps", int, 0, 10_000_000, prefix) or 0,
        **extra,
    )


def public_hyperparameters(hp: Hyperparameters) -> dict[str, Any]:
    """What the job object shows: OpenAI's three plus every resolved extension that applies.

    A hyperparameter the trainer resolves per device shows as ``"auto"`` while it is None."""
    shown = hp.model_dump()
    for name in TRAINER_RESOLVED:
        if shown[name] is None:
            shown[name] = "auto"
    return {k: v for k, v in shown.items() if v is not None}
