"""PPO for RLHF as pure tensor functions: no models, no I/O, so each piece is checked on small fixed tensors.

Shapes: ``[B, R]`` per response token (B responses of at most R tokens), ``mask`` is 1.0 on real response tokens
(up to and including the first end-of-sequence token) and 0.0 on the padding after it. Follows OpenAI's
lm-human-preferences (Ziegler et al. 2019) as documented by "The N implementation details of RLHF with PPO"
(Huang et al. 2023); where the two differ the choice is noted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: Ziegler et al.: beta moves by at most this fraction of ``n_steps / horizon`` per update
KL_ERROR_CLIP = 0.2
#: a score spread below this is treated as none (all scores equal): the normaliser only centres them
MIN_REWARD_STD = 1e-6


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (values * mask).sum() if dim is None else (values * mask).sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the masked entries (all of them, or along ``dim``); 0 where nothing is masked in."""
    if dim is None:
        return masked_sum(values, mask) / mask.sum().clamp(min=1.0)
    return masked_sum(values, mask, dim) / mask.sum(dim=dim).clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked entries, with Bessel's correction by default (as TRL's ``masked_var``)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count < 2:
            return torch.zeros((), dtype=values.dtype, device=values.device)
        var = var * count / (count - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``(x - mean) / sqrt(var + 1e-8)`` over the masked entries; ``shift_mean=False`` adds the mean back (scales
    only, as lm-human-preferences whitens rewards). Padding entries come back as 0."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def response_mask(responses: torch.Tensor, eos_token_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [B, R] float, ended [B] bool): tokens up to and including the first end-of-sequence token count;
    a response without one (cut at R tokens) counts whole and is not ``ended``."""
    is_eos = torch.zeros_like(responses, dtype=torch.bool)
    for token in eos_token_ids:
        is_eos |= responses == token
    ended = is_eos.any(dim=1)
    # tokens strictly after the first EOS: the running count of EOS tokens before them is positive
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    mask = (eos_before == 0).to(torch.float32)
    return mask, ended


def sequence_lengths(mask: torch.Tensor) -> torch.Tensor:
    return mask.sum(dim=1).long()


def apply_missing_eos_penalty(scores: torch.Tensor, ended: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """Subtract ``penalty`` from the score of every response that did not end (TRL's PPO; lm-human-preferences
    replaced such scores by -1 instead). ``None`` or 0 leaves the scores alone."""
    if not penalty:
        return scores
    return scores - penalty * (~ended).to(scores.dtype)


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The k1 estimator ``log pi - log pi_ref`` of each sampled token (0 on padding); its sum over a response is
    an unbiased estimate of KL(pi || pi_ref) for that prompt."""
    return (logprobs - ref_logprobs) * mask


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards, non_score_rewards) [B, R]: ``-kl_coef * kl`` on every response token, plus the sequence's score
    on its last real token."""
    non_score = -kl_coef * kl * mask
    last = (sequence_lengths(mask) - 1).clamp(min=0)
    rewards = non_score.clone()
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards, non_score


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, backwards over the response (Schulman et al. 2016):
    ``delta_t = r_t + gamma * V_{t+1} - V_t``, ``A_t = delta_t + gamma * lam * A_{t+1}``, with ``V`` = 0 after the
    last real token. Returns (advantages, returns = advantages + values), both 0 on padding."""
    rewards = rewards * mask
    values = values * mask
    length = rewards.shape[1]
    last_gae = torch.zeros_like(rewards[:, 0])
    reversed_adv = []
    for t in reversed(range(length)):
        next_values = values[:, t + 1] if t + 1 < length else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        reversed_adv.append(last_gae)
    advantages = torch.stack(reversed_adv[::-1], dim=1) * mask
    return advantages, (advantages + values) * mask


@dataclass
class LossOutput:
    loss: torch.Tensor
    clipfrac: torch.Tensor


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[LossOutput, torch.Tensor]:
    """PPO's clipped surrogate ``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))`` averaged over response
    tokens; clipfrac = the share of tokens where the clipped term is the larger one. Also returns the approximate
    KL between the new and the rollout policy, ``0.5 * mean((log ratio)^2)``."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return LossOutput(loss, clipfrac.detach()), approx_kl.detach()


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> LossOutput:
    """``0.5 * mean(max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2))`` over response tokens; clipfrac = the
    share of tokens where the clipped error is the larger one."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    clipfrac = masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask)
    return LossOutput(loss, clipfrac.detach())


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var(returns - values) / Var(returns)`` over response tokens: 1 is a perfect critic, 0 no better than
    a constant, negative worse. NaN when the returns do not vary."""
    var_returns = masked_var(returns, mask, unbiased=False)
    if float(var_returns) <= 0.0:
        return math.nan
    return float(1.0 - masked_var(returns - values, mask, unbiased=False) / var_returns)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at every position (last dimension: the vocabulary)."""
    log_probs = torch.log_softmax(logits, dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities of ``tokens`` under ``logits / temperature``: the distribution the rollout sampled from
    (scoring with unscaled logits makes the KL and the ratio wrong: "scale the logits by the sampling
    temperature", N implementation details)."""
    scaled = logits.float() / temperature
    return torch.gather(torch.log_softmax(scaled, dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


class KLController:
    """beta of the KL penalty: fixed (``target=None``) or adaptive toward ``target`` (Ziegler et al. 2019):
    ``e = clip(KL / target - 1, -0.2, 0.2)``, ``beta *= 1 + e * n_steps / horizon``."""

    def __init__(self, init_kl_coef: float, target: float | None, horizon: int) -> None:
        self.value = float(init_kl_coef)
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is not None:
            error = min(max(current_kl / self.target - 1.0, -KL_ERROR_CLIP), KL_ERROR_CLIP)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class RewardNormalizer:
    """Scores of the initial policy mapped to mean 0, std 1 (lm-human-preferences normalises its reward model
    this way before training): fitted once, on the first rollout batch, then a fixed affine map."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.fitted = False
        self.mean = 0.0
        self.std = 1.0

    def fit(self, scores: torch.Tensor) -> None:
        if not self.enabled or self.fitted:
            return
        values = scores.double()
        self.mean = float(values.mean())
        std = float(values.std(unbiased=False)) if values.numel() > 1 else 0.0
        self.std = std if std > MIN_REWARD_STD else 1.0
        self.fitted = True

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return scores
        return (scores - self.mean) / self.std

    @property
    def gain(self) -> float:
        return 1.0 / self.std if self.enabled else 1.0

    @property
    def bias(self) -> float:
        return -self.mean / self.std if self.enabled else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "fitted": self.fitted, "mean": self.mean, "std": self.std}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fitted, self.mean, self.std = bool(state["fitted"]), float(state["mean"]), float(state["std"])
