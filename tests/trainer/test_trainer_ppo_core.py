"""PPO's pieces against values worked out by hand on small fixed tensors (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from tuneforge.contracts.hyperparameters import ReinforcementHyperparameters
from tuneforge.trainer.methods import ppo_core as core
from tuneforge.trainer.methods.ppo import PPOConfig, ppo_config


def t(rows: list) -> torch.Tensor:  # type: ignore[type-arg]
    return torch.tensor(rows, dtype=torch.float32)


def close(actual: torch.Tensor | float, expected: list | float, tol: float = 1e-5) -> None:  # type: ignore[type-arg]
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.as_tensor(expected, dtype=torch.float32), atol=tol, rtol=0)  # fmt: skip


VALUES = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = t([[1, 1, 0], [1, 0, 0]])  # entries 1, 2, 4


def test_masked_mean_and_variance() -> None:
    close(core.masked_mean(VALUES, MASK), 7 / 3)
    close(core.masked_mean(VALUES, MASK, dim=1), [1.5, 4.0])
    # squared deviations from 7/3: 16/9, 1/9, 25/9 -> 42/9; unbiased / 2 = 7/3, population / 3 = 14/9
    close(core.masked_var(VALUES, MASK), 7 / 3)
    close(core.masked_var(VALUES, MASK, unbiased=False), 14 / 9)
    close(core.masked_var(t([[5.0, 1.0]]), t([[1, 0]])), 0.0)  # one entry: no spread to estimate


def test_masked_whitening() -> None:
    std = math.sqrt(7 / 3 + 1e-8)
    expected = [[(1 - 7 / 3) / std, (2 - 7 / 3) / std, 0.0], [(4 - 7 / 3) / std, 0.0, 0.0]]
    close(core.masked_whiten(VALUES, MASK), expected)
    whitened = core.masked_whiten(VALUES, MASK)
    close(core.masked_mean(whitened, MASK), 0.0)
    close(core.masked_var(whitened, MASK), 1.0, tol=1e-4)
    # shift_mean=False: scaled to unit variance, the mean (7/3) kept
    scaled = core.masked_whiten(VALUES, MASK, shift_mean=False)
    close(scaled, [[e + 7 / 3 if m else 0.0 for e, m in zip(row, mrow, strict=True)]
                   for row, mrow in zip(expected, MASK.tolist(), strict=True)])  # fmt: skip


def test_response_mask_stops_after_the_first_eos() -> None:
    responses = torch.tensor([[5, 9, 2, 0], [5, 6, 7, 8], [2, 2, 0, 0], [7, 3, 1, 2]])
    mask, ended = core.response_mask(responses, [2])
    close(mask, [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert ended.tolist() == [True, False, True, True]
    # several end tokens (e.g. <|im_end|> and <|endoftext|>): the first of any
    mask, ended = core.response_mask(responses, [2, 3])
    close(mask[3], [1, 1, 0, 0])
    assert core.sequence_lengths(mask).tolist() == [3, 4, 1, 2]


def test_missing_eos_penalty() -> None:
    scores, ended = t([1.0, 0.5, -0.2]), torch.tensor([True, False, True])
    close(core.apply_missing_eos_penalty(scores, ended, 1.0), [1.0, -0.5, -0.2])
    close(core.apply_missing_eos_penalty(scores, ended, 0.25), [1.0, 0.25, -0.2])
    close(core.apply_missing_eos_penalty(scores, ended, None), [1.0, 0.5, -0.2])


def test_per_token_kl_penalty_and_score_on_the_last_token() -> None:
    logprobs = t([[-1.0, -2.0, -0.5], [-0.3, -0.4, -9.0]])
    ref = t([[-1.5, -1.0, -0.5], [-0.3, -0.9, -1.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    kl = core.per_token_kl(logprobs, ref, mask)
    close(kl, [[0.5, -1.0, 0.0], [0.0, 0.5, 0.0]])  # the padding token's -8 is masked out
    rewards, non_score = core.token_rewards(t([2.0, -1.0]), kl, mask, kl_coef=0.1)
    close(non_score, [[-0.05, 0.1, 0.0], [0.0, -0.05, 0.0]])
    # score on the last real token: position 2 of row 0, position 1 of row 1
    close(rewards, [[-0.05, 0.1, 2.0], [0.0, -1.05, 0.0]])


def test_gae_gamma_one_lambda_095() -> None:
    rewards, values, mask = t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]]), t([[1, 1, 1]])
    adv, ret = core.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # t=2: delta = 1 - 0.7 = 0.3 -> A = 0.3; t=1: delta = 0.7 - 0.6 = 0.1 -> A = 0.1 + 0.95 * 0.3 = 0.385
    # t=0: delta = 0.6 - 0.5 = 0.1 -> A = 0.1 + 0.95 * 0.385 = 0.46575
    close(adv, [[0.46575, 0.385, 0.3]])
    close(ret, [[0.96575, 0.985, 1.0]])


def test_gae_with_discount_and_padding() -> None:
    adv, _ = core.gae(t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]]), t([[1, 1, 1]]), gamma=0.9, lam=0.5)
    # t=2: 0.3; t=1: delta = 0.9 * 0.7 - 0.6 = 0.03, A = 0.03 + 0.45 * 0.3 = 0.165
    # t=0: delta = 0.9 * 0.6 - 0.5 = 0.04, A = 0.04 + 0.45 * 0.165 = 0.11425
    close(adv, [[0.11425, 0.165, 0.3]])
    # after the last real token rewards and values do not count (V = 0 there): gamma = lambda = 1 gives the
    # plain return-to-go 0.2 + 1.0 = 1.2, 1.0
    adv, ret = core.gae(t([[0.2, 1.0, 5.0]]), t([[0.1, 0.2, 9.0]]), t([[1, 1, 0]]), gamma=1.0, lam=1.0)
    close(ret, [[1.2, 1.0, 0.0]])
    close(adv, [[1.1, 0.8, 0.0]])


def test_clipped_policy_loss_and_clip_fraction() -> None:
    ratio = t([[1.5, 0.5, 1.1]])
    logprobs, old = torch.log(ratio), torch.zeros(1, 3)
    advantages = t([[1.0, 1.0, -2.0]])
    out, approx_kl = core.clipped_policy_loss(logprobs, old, advantages, t([[1, 1, 1]]), cliprange=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped wins); token 1: max(-0.5, -0.8) = -0.5;
    # token 2: max(2.2, 2.2) = 2.2 (a tie is not clipping) -> loss (-1.2 - 0.5 + 2.2) / 3, clipfrac 1/3
    close(out.loss, 0.5 / 3)
    close(out.clipfrac, 1 / 3)
    close(approx_kl, 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 3)
    out, _ = core.clipped_policy_loss(logprobs, old, advantages, t([[1, 1, 0]]), cliprange=0.2)
    close(out.loss, (-1.2 - 0.5) / 2)
    close(out.clipfrac, 0.5)
    # the gradient flows through the unclipped term only where it is the larger one (token 1)
    lp = logprobs.clone().requires_grad_(True)
    core.clipped_policy_loss(lp, old, advantages, t([[1, 1, 1]]), cliprange=0.2)[0].loss.backward()
    assert lp.grad is not None
    close(lp.grad, [[0.0, -0.5 / 3, 2 * 1.1 / 3]])


def test_clipped_value_loss_and_clip_fraction() -> None:
    values, old, returns = t([[1.0, 0.0, 0.5]]), t([[0.5, 0.5, 0.5]]), t([[2.0, 0.0, 0.5]])
    out = core.clipped_value_loss(values, old, returns, t([[1, 1, 1]]), cliprange_value=0.2)
    # token 0: clipped V = 0.7, errors 1.0 vs 1.69 -> 1.69 (clipped); token 1: clipped V = 0.3, errors 0 vs 0.09
    # -> 0.09 (clipped); token 2: 0 vs 0 -> 0. loss = 0.5 * 1.78 / 3, clipfrac 2/3
    close(out.loss, 0.5 * 1.78 / 3)
    close(out.clipfrac, 2 / 3)


def test_explained_variance() -> None:
    returns, mask = t([[1.0, 2.0, 3.0, 9.0]]), t([[1, 1, 1, 0]])
    assert core.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert core.explained_variance(torch.full((1, 4), 2.0), returns, mask) == pytest.approx(0.0, abs=1e-6)
    # values 1.5, 2, 2.5: residuals -0.5, 0, 0.5 (variance 1/6) against returns' variance 2/3 -> 0.75
    assert core.explained_variance(t([[1.5, 2.0, 2.5, 0.0]]), returns, mask) == pytest.approx(0.75)
    assert math.isnan(core.explained_variance(returns, torch.ones(1, 4), mask))


def test_entropy_and_temperature_scaled_logprobs() -> None:
    close(core.entropy_from_logits(torch.zeros(1, 1, 4)), [[math.log(4)]])
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    close(core.logprobs_of(logits, torch.tensor([[1]]), 1.0), [[math.log(0.75)]])
    # temperature 2: logits 0 and log(3)/2 -> p = sqrt(3) / (1 + sqrt(3))
    close(core.logprobs_of(logits, torch.tensor([[1]]), 2.0), [[math.log(math.sqrt(3) / (1 + math.sqrt(3)))]])


def test_adaptive_kl_controller() -> None:
    ctl = core.KLController(0.1, target=6.0, horizon=100)
    # KL 9 vs target 6: error 0.5 clipped to 0.2 -> beta * (1 + 0.2 * 10 / 100) = 0.102
    assert ctl.update(9.0, n_steps=10) == pytest.approx(0.102)
    # KL 5.7: error -0.05 -> beta * (1 - 0.05 * 0.1) = 0.102 * 0.995
    assert ctl.update(5.7, n_steps=10) == pytest.approx(0.102 * 0.995)
    # far below target: clipped at -0.2 per horizon
    assert ctl.update(0.0, n_steps=100) == pytest.approx(0.102 * 0.995 * 0.8)
    restored = core.KLController(0.1, target=6.0, horizon=100)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
    fixed = core.KLController(0.05, target=None, horizon=100)
    assert fixed.update(100.0, n_steps=1000) == 0.05


def test_reward_normaliser_is_fitted_once_on_the_initial_policy() -> None:
    norm = core.RewardNormalizer(enabled=True)
    norm.fit(t([1.0, 2.0, 3.0, 4.0]))  # mean 2.5, population std sqrt(1.25)
    close(norm(t([2.5, 2.5 + math.sqrt(1.25)])), [0.0, 1.0])
    norm.fit(t([100.0, 200.0]))  # later batches do not move it
    close(norm(t([2.5])), [0.0])
    close(norm.gain * 4.0 + norm.bias, float(norm(t([4.0]))[0]))
    flat = core.RewardNormalizer(enabled=True)
    flat.fit(t([3.0, 3.0]))  # no spread: centred only
    close(flat(t([4.0])), [1.0])
    off = core.RewardNormalizer(enabled=False)
    off.fit(t([1.0, 5.0]))
    close(off(t([4.0])), [4.0])
    assert (off.gain, off.bias) == (1.0, 0.0)


def _hp(**extra: object) -> ReinforcementHyperparameters:
    return ReinforcementHyperparameters.model_validate({"n_epochs": 1, "batch_size": 2, "learning_rate": 1e-5,
                                                        **extra})  # fmt: skip


def test_loop_settings_come_from_the_reinforcement_contract() -> None:
    # nothing set: the contract's PPO defaults, and the algorithm-dependent autos resolved for ppo
    config = ppo_config(_hp())
    assert config == PPOConfig(), "the loop's defaults are the contract's"
    assert (config.init_kl_coef, config.response_length, config.temperature, config.target_kl) == (0.15, 53, 0.7, 6.0)
    # the shared fields mean the same for ppo: kl_coef is the starting beta, max_completion_length the length
    config = ppo_config(_hp(kl_coef=0.05, max_completion_length=40, temperature=0.9, vf_coef=0.5))
    assert (config.init_kl_coef, config.response_length, config.temperature, config.vf_coef) == (0.05, 40, 0.9, 0.5)
    # 0 switches off what null switched off before: the adaptive controller, the EOS penalty, gradient clipping
    off = ppo_config(_hp(kl_coef=0.0, target_kl=0.0, missing_eos_penalty=0.0, max_grad_norm=0.0))
    assert (off.init_kl_coef, off.target_kl, off.missing_eos_penalty, off.max_grad_norm) == (0.0, None, None, None)
