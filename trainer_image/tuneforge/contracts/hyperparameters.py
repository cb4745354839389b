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


#: reinforcement algorithms (``method.reinforcement.algorithm``)
Algorithm = Literal["grpo", "rloo", "ppo"]
#: where PPO's critic starts: the reward model's weights, zero, or auto (the reward model when it shares the base)
ValueHeadInit = Literal["auto", "reward_model", "zero"]

#: reinforcement fields whose auto value depends on the algorithm: (grpo and rloo, ppo). PPO's come from OpenAI's
#: lm-human-preferences (Ziegler et al. 2019) as "The N implementation details of RLHF with PPO" (Huang et al.
#: 2023) documents it; GRPO's and RLOO's from TRL.
RL_AUTO: dict[str, tuple[Any, Any]] = {
    "kl_coef": (0.0, 0.15),
    "num_generations": (4, 1),
    "max_completion_length": (256, 53),
    "temperature": (1.0, 0.7),
}
#: PPO's own fields (null: not set) and the value they take with ``algorithm: ppo``; set with grpo or rloo, a job
#: is refused
PPO_DEFAULTS: dict[str, Any] = {
    "target_kl": 6.0, "kl_horizon": 10_000, "gamma": 1.0, "lam": 0.95, "cliprange": 0.2, "cliprange_value": 0.2,
    "vf_coef": 0.1, "ppo_epochs": 4, "num_mini_batches": 1, "missing_eos_penalty": 1.0, "normalize_reward": True,
    "whiten_rewards": False, "whiten_advantages": True, "value_head_init": "auto", "max_grad_norm": 1.0,
}  # fmt: skip


def _ppo(default: Any, description: str) -> Any:
    return Field(None, description=f"PPO only (algorithm 'ppo'; refused with grpo and rloo). {description}. "
                 f"Default {str(default).lower() if isinstance(default, bool) else default}")


class ReinforcementHyperparameters(_Hyperparameters):
    """``method.type: reinforcement`` (GRPO, RLOO or PPO on prompt-only data, rewarded by the grader).

    The shared fields' ``auto`` depends on the algorithm (:data:`RL_AUTO`); PPO's own fields are null unless
    set, and the algorithm's check (:meth:`check_algorithm`) refuses them with grpo and rloo."""

    base_learning_rate: ClassVar[float | None] = 1e-6

    kl_coef: Annotated[float, Field(ge=0, le=100)] | Auto = Field(
        AUTO, description="Weight of the KL penalty toward the starting model (TRL's beta; PPO's starting beta). "
        "auto: 0.0 for grpo and rloo, 0.15 for ppo")
    num_generations: Annotated[int, Field(ge=1, le=64)] | Auto = Field(
        AUTO, description="Completions sampled per prompt (grpo and rloo compare their rewards, so at least 2). "
        "auto: 4 for grpo and rloo, 1 for ppo")
    max_completion_length: Annotated[int, Field(ge=1, le=32768)] | Auto = Field(
        AUTO, description="Longest completion in tokens. auto: 256 for grpo and rloo, 53 for ppo")
    temperature: Annotated[float, Field(ge=0.01, le=5)] | Auto = Field(
        AUTO, description="Sampling temperature of the completions. auto: 1.0 for grpo and rloo, 0.7 for ppo")

    # -- PPO (a tuneforge extension: OpenAI offers no PPO) --
    target_kl: Annotated[float, Field(ge=0, le=1000)] | None = _ppo(
        6.0, "KL to the starting model per completion (nats, summed over its tokens) that an adaptive controller "
        "steers kl_coef toward; 0 keeps kl_coef fixed")
    kl_horizon: Annotated[int, Field(ge=1, le=10_000_000)] | None = _ppo(
        10_000, "Horizon of the adaptive KL controller in completions: kl_coef moves by at most 20% per horizon")
    gamma: Annotated[float, Field(ge=0, le=1)] | None = _ppo(1.0, "Discount factor of the per-token returns")
    lam: Annotated[float, Field(ge=0, le=1)] | None = _ppo(0.95, "GAE lambda (bias/variance trade-off of the "
                                                           "advantages)")
    cliprange: Annotated[float, Field(gt=0, le=1)] | None = _ppo(0.2, "Clip epsilon of the policy ratio")
    cliprange_value: Annotated[float, Field(gt=0, le=100)] | None = _ppo(
        0.2, "How far a new value prediction may move from the rollout's value")
    vf_coef: Annotated[float, Field(ge=0, le=100)] | None = _ppo(0.1, "Weight of the value loss next to the "
                                                                 "policy loss")
    ppo_epochs: Annotated[int, Field(ge=1, le=64)] | None = _ppo(4, "Passes over each rollout batch")
    num_mini_batches: Annotated[int, Field(ge=1, le=1024)] | None = _ppo(
        1, "Minibatches (optimizer steps) per pass; must divide batch_size x num_generations")
    missing_eos_penalty: Annotated[float, Field(ge=0, le=100)] | None = _ppo(
        1.0, "Subtracted from the (normalised) score of a completion that does not end within "
        "max_completion_length; 0: no penalty")
    normalize_reward: bool | None = _ppo(True, "Scale scores to mean 0, std 1 over the first rollout batch (the "
                                         "starting policy), then keep that scale")
    whiten_rewards: bool | None = _ppo(False, "Scale the per-token rewards of each batch to unit variance")
    whiten_advantages: bool | None = _ppo(True, "Shift and scale the advantages of each batch to mean 0, std 1")
    value_head_init: ValueHeadInit | None = _ppo(
        "auto", "Where the critic starts: reward_model (its adapter and score head), zero, or auto (the reward "
        "model when it is a LoRA adapter on the same base; decided by the trainer)")
    max_grad_norm: Annotated[float, Field(ge=0, le=1e6)] | None = _ppo(
        1.0, "Clip the gradient norm of each optimizer step; 0: no clipping")

    def auto_epochs(self, rows: int, steps_per_epoch: int) -> int:
        return 1 if rows >= 64 else min(3, super().auto_epochs(rows, steps_per_epoch))

    def for_algorithm(self, algorithm: Algorithm) -> ReinforcementHyperparameters:
        """A copy with the algorithm-dependent ``auto`` values and (for ppo) PPO's defaults filled in."""
        ppo = algorithm == "ppo"
        update: dict[str, Any] = {name: values[ppo] for name, values in RL_AUTO.items()
                                  if getattr(self, name) == AUTO}  # fmt: skip
        if ppo:
            update.update({name: value for name, value in PPO_DEFAULTS.items() if getattr(self, name) is None})
        return self.model_copy(update=update)

    def check_algorithm(self, algorithm: Algorithm) -> list[tuple[str, str]]:
        """``(field, problem)`` for every field that does not fit the algorithm (the method model raises them)."""
        problems: list[tuple[str, str]] = []
        if algorithm != "ppo":
            misplaced = f"a PPO hyperparameter: it applies only with algorithm 'ppo', not '{algorithm}'"
            problems += [(name, misplaced) for name in PPO_DEFAULTS if getattr(self, name) is not None]
            if self.num_generations != AUTO and self.num_generations < 2:
                problems.append(("num_generations", f"{algorithm} compares the completions of one prompt, so it "
                                 f"needs at least 2, got {self.num_generations}"))  # fmt: skip
            return problems
        hp = self.for_algorithm(algorithm)
        if hp.target_kl and hp.kl_coef == 0:
            problems.append(("kl_coef", "an adaptive KL controller (target_kl > 0) scales kl_coef, so kl_coef must "
                             "be above 0 (or set target_kl to 0 for a fixed kl_coef of 0)"))  # fmt: skip
        if hp.batch_size != AUTO and (hp.batch_size * int(hp.num_generations)) % int(hp.num_mini_batches or 1):
            problems.append(("num_mini_batches", f"must divide the rollout batch, batch_size x num_generations = "
                             f"{hp.batch_size} x {hp.num_generations}, got {hp.num_mini_batches}"))  # fmt: skip
        elif hp.batch_size != AUTO:
            minibatch = hp.batch_size * int(hp.num_generations) // int(hp.num_mini_batches or 1)
            if minibatch % hp.gradient_accumulation_steps:
                problems.append(("gradient_accumulation_steps", f"must divide a PPO minibatch of {minibatch} "
                                 f"completions, got {hp.gradient_accumulation_steps}"))  # fmt: skip
        if hp.max_length - int(hp.max_completion_length) < 1:
            problems.append(("max_completion_length", f"must be below max_length ({hp.max_length}) to leave room "
                             f"for the prompt, got {hp.max_completion_length}"))  # fmt: skip
        return problems


AnyHyperparameters = (
    SupervisedHyperparameters | DpoHyperparameters | RewardModelHyperparameters | ReinforcementHyperparameters
)
