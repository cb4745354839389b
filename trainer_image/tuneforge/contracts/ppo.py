"""PPO hyperparameters (``method.type: reinforcement``, ``algorithm: ppo``): one frozen model, defaults from the
references the trainer follows (OpenAI's lm-human-preferences, Ziegler et al. 2019, and "The N implementation
details of RLHF with PPO", Huang et al. 2023). Imports nothing of ours.

Lengths are in tokens, KL values in nats summed over one response (per-token KL ``log pi - log pi_ref``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ValueHeadInit = Literal["auto", "reward_model", "zero"]


class PPOHyperparameters(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    init_kl_coef: float = Field(
        0.15, ge=0.0, le=10.0,
        description="beta at the start: each response token is rewarded -beta * (log pi - log pi_ref)",
    )
    target_kl: float | None = Field(
        6.0, gt=0.0, le=1000.0,
        description="KL per response the adaptive controller steers beta toward; null keeps beta fixed",
    )
    kl_horizon: int = Field(
        10_000, ge=1, le=10_000_000,
        description="adaptive controller horizon in responses: beta moves by at most 20% per horizon",
    )
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="discount factor of the per-token returns")
    lam: float = Field(0.95, ge=0.0, le=1.0, description="GAE lambda (bias/variance trade-off of advantages)")
    cliprange: float = Field(0.2, gt=0.0, le=1.0, description="PPO ratio clip epsilon of the policy loss")
    cliprange_value: float = Field(
        0.2, gt=0.0, le=100.0, description="how far a new value prediction may move from the rollout's value",
    )
    vf_coef: float = Field(0.1, ge=0.0, le=100.0, description="weight of the value loss next to the policy loss")
    ppo_epochs: int = Field(4, ge=1, le=64, description="passes over each rollout batch")
    num_mini_batches: int = Field(
        1, ge=1, le=1024, description="minibatches (optimizer steps) per pass; must divide the rollout batch",
    )
    temperature: float = Field(0.7, gt=0.0, le=5.0, description="sampling temperature of the rollouts")
    response_length: int = Field(53, ge=1, le=32_768, description="most new tokens per response")
    missing_eos_penalty: float | None = Field(
        1.0, ge=0.0, le=100.0,
        description="subtracted from the score of a response that does not end within response_length; null: none",
    )
    normalize_reward: bool = Field(
        True, description="scale scores to mean 0, std 1 over the first rollout batch (the initial policy), then fixed",
    )
    whiten_rewards: bool = Field(False, description="scale the per-token rewards of each batch to unit variance")
    whiten_advantages: bool = Field(True, description="shift and scale the advantages of each batch to mean 0, std 1")
    value_head_init: ValueHeadInit = Field(
        "auto",
        description="critic start: the reward model's weights, zero, or auto (the reward model when it shares "
        "the base)",
    )
    max_grad_norm: float | None = Field(
        1.0, gt=0.0, le=1e6, description="clip the gradient norm of each optimizer step; null: no clipping",
    )

    @model_validator(mode="after")
    def _check(self) -> PPOHyperparameters:
        if self.target_kl is not None and self.init_kl_coef == 0.0:
            raise ValueError("an adaptive KL controller (target_kl) needs init_kl_coef > 0: it scales beta")
        return self
