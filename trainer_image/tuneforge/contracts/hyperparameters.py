"""Hyperparameters of every method: one frozen model per ``method.type``, with defaults, bounds and a
description per field.

These models are the single source of truth: the service validates job requests with them (so a job the
trainer would refuse is refused at creation, with the field named), the OpenAPI schema shows them, the trainer
reads its defaults from them, and ``resolved`` turns every ``"auto"`` the service can decide into a number.

``"auto"`` values left in a resolved JobSpec are the ones that depend on the device the trainer lands on
(``gradient_checkpointing``): the trainer decides those.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Auto = Literal["auto"]
AUTO: Auto = "auto"

#: learning-rate schedules passed to transformers (those that need no extra arguments)
LrScheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
]
#: TRL 1.16 DPO losses (``DPOConfig.loss_type``)
DpoLossType = Literal[
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sigmoid_norm",
]

#: aim for about this many optimizer steps when ``n_epochs`` is auto
TARGET_STEPS = 200
#: base learning rates that ``learning_rate_multiplier`` scales, per adapter (LoRA learns at a much higher rate)
ADAPTER_BASE_LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}

#: OpenAI hyperparameters tuneforge does not offer, with the reason a client is told
UNSUPPORTED = {
    "reasoning_effort": "tuneforge's base models do not reason in hidden tokens, so 'reasoning_effort' has no "
    "effect; remove it",
    "compute_multiplier": "'compute_multiplier' is not supported; set 'num_generations' and "
    "'max_completion_length' to choose how much is sampled per prompt",
    "eval_samples": "'eval_samples' is not supported; the whole validation file is evaluated",
}


class _Hyperparameters(BaseModel):
    """What every method shares (they all train with the same optimizer loop)."""

    # strict: true is not a batch size and "yes" is not true (JSON numbers still fill float fields)
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, strict=True)

    #: ``learning_rate`` of a full fine-tune at multiplier 1 (LoRA: 10 times that for the preference and RL methods)
    base_learning_rate: ClassVar[float | None] = None

    n_epochs: Annotated[int, Field(ge=1, le=50)] | Auto = Field(
        AUTO, description="Passes over the training data. auto: about 200 optimizer steps on small data sets "
        "(at most 10 epochs), 1 epoch from 2,000 rows")
    batch_size: Annotated[int, Field(ge=1, le=256)] | Auto = Field(
        AUTO, description="Examples per optimizer step and device (reinforcement: prompts). auto: up to 8, "
        "fewer for tiny data sets")
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Auto = Field(
        AUTO, description="Scales the method's base learning rate. auto: 1")
    learning_rate: Annotated[float, Field(gt=0, le=1)] | Auto = Field(
        AUTO, description="Peak learning rate; overrides the multiplier. auto: the method's base rate for the "
        "adapter type times the multiplier")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step")
    max_length: int = Field(1024, ge=16, le=131072, description="Longest example in tokens; longer ones are "
                            "truncated (preference pairs lose their oldest prompt turns first)")
    warmup_ratio: float = Field(0.03, ge=0, le=0.5, description="Fraction of the steps spent warming up the "
                                "learning rate")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay")
    lr_scheduler: LrScheduler = Field("linear", description="Learning-rate schedule after warm-up")
    packing: bool = Field(False, description="Pack several short examples into one sequence (supervised)")
    gradient_checkpointing: bool | Auto = Field(
        AUTO, description="Recompute activations to save memory. auto: on with CUDA, off on the CPU (where "
        "memory is plentiful and recomputation costs ~30% speed); decided by the trainer")
    max_steps: Annotated[int, Field(ge=1, le=10_000_000)] | None = Field(
        None, description="Stop after this many optimizer steps (null: train for n_epochs)")
    checkpoint_every_steps: Annotated[int, Field(ge=0, le=10_000_000)] | Auto = Field(
        AUTO, description="Save a resumable checkpoint every N steps (0: only at the end). auto: five "
        "checkpoints per job, at least 10 steps apart")
    keep_checkpoints: int = Field(2, ge=1, le=100, description="Checkpoints kept in the object store; older "
                                  "ones are deleted")
    eval_every_steps: int = Field(
        0, ge=0, le=10_000_000, validation_alias="eval_interval",
        description="Evaluate on the validation file every N steps (0: with every checkpoint). OpenAI's "
        "eval_interval is accepted as a synonym")

    @model_validator(mode="before")
    @classmethod
    def _one_name_for_eval_interval(cls, data: Any) -> Any:
        if isinstance(data, dict) and "eval_every_steps" in data and "eval_interval" in data:
            raise ValueError("give either 'eval_every_steps' or its synonym 'eval_interval', not both")
        return data

    # -- resolution of "auto" --
    def method_base_learning_rate(self, adapter: str) -> float:
        if self.base_learning_rate is None:
            return ADAPTER_BASE_LR.get(adapter, 2e-4)
        # LoRA tolerates (and needs) larger steps than full tuning
        return self.base_learning_rate * (1 if adapter == "full" else 10)

    def auto_epochs(self, rows: int, steps_per_epoch: int) -> int:
        return max(1, min(10, math.ceil(TARGET_STEPS / steps_per_epoch))) if rows < 2000 else 1

    def resolved(self, *, rows: int, adapter: str) -> _Hyperparameters:
        """A copy with every service-decidable ``"auto"`` replaced by a number (idempotent)."""
        batch_size = self.batch_size if self.batch_size != AUTO else max(1, min(8, rows // 16 or 1))
        steps_per_epoch = max(1, math.ceil(rows / batch_size))
        n_epochs = self.n_epochs if self.n_epochs != AUTO else self.auto_epochs(rows, steps_per_epoch)
        multiplier = self.learning_rate_multiplier if self.learning_rate_multiplier != AUTO else 1.0
        learning_rate = (self.learning_rate if self.learning_rate != AUTO
                         else self.method_base_learning_rate(adapter) * multiplier)
        total_steps = self.max_steps or steps_per_epoch * n_epochs
        checkpoint_every = (self.checkpoint_every_steps if self.checkpoint_every_steps != AUTO
                            else max(10, total_steps // 5))
        return self.model_copy(update={
            "batch_size": batch_size, "n_epochs": n_epochs, "learning_rate_multiplier": multiplier,
            "learning_rate": learning_rate, "checkpoint_every_steps": checkpoint_every,
            **self._resolved_extra(),
        })

    def _resolved_extra(self) -> dict[str, Any]:
        return {}


class SupervisedHyperparameters(_Hyperparameters):
    """``method.type: supervised`` (instruction tuning on chat or prompt/completion data)."""


class DpoHyperparameters(_Hyperparameters):
    """``method.type: dpo`` (direct preference optimisation; with LoRA the base is the reference model)."""

    base_learning_rate: ClassVar[float | None] = 5e-6

    beta: Annotated[float, Field(gt=0, le=100)] | Auto = Field(
        AUTO, description="Strength of the pull toward the reference model. auto: 0.1")
    loss_type: DpoLossType = Field("sigmoid", description="DPO loss (TRL's names)")

    def auto_epochs(self, rows: int, steps_per_epoch: int) -> int:
        return 1 if rows >= 64 else min(3, super().auto_epochs(rows, steps_per_epoch))

    def _resolved_extra(self) -> dict[str, Any]:
        return {"beta": self.beta if self.beta != AUTO else 0.1}


class RewardModelHyperparameters(_Hyperparameters):
    """``method.type: reward_model`` (a sequence classifier scoring chosen over rejected)."""

    base_learning_rate: ClassVar[float | None] = 1e-5

    def auto_epochs(self, rows: int, steps_per_epoch: int) -> int:
        return 1 if rows >= 64 else min(3, super().auto_epochs(rows, steps_per_epoch))


class ReinforcementHyperparameters(_Hyperparameters):
    """``method.type: reinforcement`` (GRPO, RLOO or PPO on prompt-only data, rewarded by the grader)."""

    base_learning_rate: ClassVar[float | None] = 1e-6

    kl_coef: float = Field(0.0, ge=0, le=100, description="Weight of the KL penalty toward the starting model "
                           "(TRL's beta)")
    num_generations: int = Field(4, ge=2, le=64, description="Completions sampled per prompt (their rewards are "
                                 "compared with each other)")
    max_completion_length: int = Field(256, ge=1, le=32768, description="Longest completion in tokens")
    temperature: float = Field(1.0, ge=0.01, le=5, description="Sampling temperature of the completions")

    def auto_epochs(self, rows: int, steps_per_epoch: int) -> int:
        return 1 if rows >= 64 else min(3, super().auto_epochs(rows, steps_per_epoch))


AnyHyperparameters = (
    SupervisedHyperparameters | DpoHyperparameters | RewardModelHyperparameters | ReinforcementHyperparameters
)
