"""The PPO loop, behind the part of ``transformers.Trainer``'s interface the runner uses.

One training step is one PPO update: sample responses to ``batch_size`` prompts (``num_generations`` each) from
the policy, score them, compute per-token rewards, values and GAE advantages, then ``ppo_epochs`` passes over
the batch in ``num_mini_batches`` minibatches (one optimizer step each). The loop drives transformers'
``CallbackHandler`` with a real ``TrainerState``/``TrainerControl`` exactly where ``Trainer`` would, so the
runner's progress, checkpoint-upload and preemption callbacks work unchanged; HF's ``DefaultFlowCallback``
decides when to log, evaluate and save.

A checkpoint holds what an exact resume needs: the policy adapter (at the top, as any LoRA checkpoint), the
critic adapter and value head, the optimizer and scheduler, the KL controller and reward normaliser, every
rank's RNG state and the step (the prompt order is a function of the seed and the step).

Under torchrun each rank samples its own share of every batch and holds the whole (small, LoRA) trainable state;
gradients, the KL and the normaliser's statistics are averaged over ranks, so every rank takes the same steps.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback
from transformers.trainer_utils import TrainOutput

from tuneforge.trainer.methods import ppo_core as core
from tuneforge.trainer.methods.ppo import PPOConfig
from tuneforge.trainer.methods.ppo_models import CRITIC, POLICY, Batch, SharedBaseModels
from tuneforge.trainer.methods.ppo_rewards import Messages, Scorer

STATE_FILE = "ppo_state.json"
CRITIC_FILE = "critic_adapter.safetensors"
VALUE_HEAD_FILE = "value_head.safetensors"
POLICY_FILE = "adapter_model.safetensors"


@dataclass
class Prompts:
    """Prompt-only rows: the chat messages, their token ids (with the generation prompt) and reference columns."""

    messages: list[Messages]
    token_ids: list[list[int]]
    columns: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.messages)

    def take(self, index: list[int], repeat: int) -> tuple[list[Messages], list[list[int]], dict[str, list[Any]]]:
        rows = [i for i in index for _ in range(repeat)]
        return (
            [self.messages[i] for i in rows],
            [self.token_ids[i] for i in rows],
            {k: [v[i] for i in rows] for k, v in self.columns.items()},
        )


@dataclass
class Settings:
    """What the loop needs besides the PPO hyperparameters."""

    batch_size: int  # prompts per step per rank
    samples_per_prompt: int
    gradient_accumulation_steps: int
    total_steps: int
    seed: int
    learning_rate: float
    weight_decay: float
    lr_scheduler: str
    warmup_steps: int
    eos_token_ids: list[int]
    pad_token_id: int


class _Dist:
    """torch.distributed when a torchrun launch initialised it, else a world of one."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.rank = self.dist.get_rank() if self.dist else 0
        self.size = self.dist.get_world_size() if self.dist else 1

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.dist is None:
            return value
        value = value.clone()
        self.dist.all_reduce(value)
        return value / self.size

    def cat(self, value: torch.Tensor) -> torch.Tensor:
        if self.dist is None:
            return value
        parts = [torch.empty_like(value) for _ in range(self.size)]
        self.dist.all_gather(parts, value.contiguous())
        return torch.cat(parts)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if self.dist is None:
            return
        for p in params:
            if p.grad is not None:
                self.dist.all_reduce(p.grad)
                p.grad /= self.size

    def gather_objects(self, value: Any) -> list[Any]:
        if self.dist is None:
            return [value]
        out: list[Any] = [None] * self.size
        self.dist.all_gather_object(out, value)
        return out


class PPOTrainer:
    def __init__(
        self,
        *,
        models: SharedBaseModels,
        scorer: Scorer,
        tokenizer: Any,
        config: PPOConfig,
        settings: Settings,
        args: TrainingArguments,
        train: Prompts,
        valid: Prompts | None,
        device: torch.device,
    ) -> None:
        from transformers import GenerationConfig, get_scheduler

        self.models = models
        self.scorer = scorer
        self.tokenizer = tokenizer
        self.config = config
        self.settings = settings
        self.args = args
        self.train_prompts = train
        self.valid_prompts = valid
        self.device = device
        self.dist = _Dist()
        self.params = models.trainable_parameters()
        self.optimizer = torch.optim.AdamW(
            self.params, lr=settings.learning_rate, weight_decay=settings.weight_decay, eps=1e-5
        )  # eps 1e-5: lm-human-preferences' Adam
        self.lr_scheduler = get_scheduler(
            settings.lr_scheduler, self.optimizer, num_warmup_steps=settings.warmup_steps,
            num_training_steps=settings.total_steps,
        )  # fmt: skip
        self.kl_ctl = core.KLController(config.init_kl_coef, config.target_kl, config.kl_horizon)
        self.normalizer = core.RewardNormalizer(config.normalize_reward)
        #: the value head starts as the reward model's score head and follows the normaliser once it is fitted
        self.value_head_from_reward_model = False
        self.generation_config = GenerationConfig(
            max_new_tokens=config.response_length, do_sample=True, temperature=config.temperature, top_k=0,
            top_p=1.0, eos_token_id=settings.eos_token_ids, pad_token_id=settings.pad_token_id, use_cache=True,
        )  # fmt: skip
        self.state = TrainerState(is_local_process_zero=self.dist.rank == 0, is_world_process_zero=self.dist.rank == 0)
        self.control = TrainerControl()
        self.callback_handler = CallbackHandler([DefaultFlowCallback], models.peft, tokenizer, self.optimizer,
                                                self.lr_scheduler)  # fmt: skip
        self.rollout_size = settings.batch_size * settings.samples_per_prompt
        self.minibatch_size = self.rollout_size // config.num_mini_batches
        self.micro_size = self.minibatch_size // settings.gradient_accumulation_steps
        global_batch = settings.batch_size * self.dist.size
        self.steps_per_epoch = max(1, math.ceil(len(train) / global_batch))

    # -- the Trainer interface the runner uses --

    def add_callback(self, callback: Any) -> None:
        self.callback_handler.add_callback(callback)

    def remove_callback(self, callback: Any) -> None:
        self.callback_handler.remove_callback(callback)

    def pop_callback(self, callback: Any) -> Any:
        return self.callback_handler.pop_callback(callback)

    def save_model(self, directory: str) -> None:
        if self.dist.rank == 0:
            self.models.save_policy(Path(directory))

    def log(self, logs: dict[str, float]) -> None:
        if self.state.epoch is not None:
            logs = {**logs, "epoch": round(self.state.epoch, 4)}
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    def evaluate(self) -> dict[str, float]:
        metrics = self._evaluate()
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics

    def train(self, resume_from_checkpoint: str | None = None) -> TrainOutput:
        started = time.perf_counter()
        if resume_from_checkpoint:
            self._load_checkpoint(Path(resume_from_checkpoint))
        self.state.max_steps = self.settings.total_steps
        self.state.num_train_epochs = math.ceil(self.settings.total_steps / self.steps_per_epoch)
        self.state.compute_steps(self.args, self.settings.total_steps)
        self.state.logging_steps = 1  # a PPO step is a whole rollout: always worth a metrics event
        self.control = self.callback_handler.on_train_begin(self.args, self.state, self.control)
        losses: list[float] = []
        while self.state.global_step < self.state.max_steps:
            self.control = self.callback_handler.on_step_begin(self.args, self.state, self.control)
            metrics = self._ppo_step(self.state.global_step)
            losses.append(metrics["loss"])
            self.state.global_step += 1
            self.state.epoch = self.state.global_step / self.steps_per_epoch
            self.control = self.callback_handler.on_step_end(self.args, self.state, self.control)
            self._agree_on_control()
            if self.control.should_log:
                self.log(metrics)
            if self.control.should_evaluate and self.valid_prompts is not None:
                self.evaluate()
            if self.control.should_save:
                self._save_checkpoint()
                self.control = self.callback_handler.on_save(self.args, self.state, self.control)
            if self.control.should_training_stop:
                break
        self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        runtime = time.perf_counter() - started
        loss = sum(losses) / len(losses) if losses else 0.0
        return TrainOutput(self.state.global_step, loss, {"train_runtime": runtime, "train_loss": loss})

    def _agree_on_control(self) -> None:
        """Every rank must save (a collective) and stop at the same step; SIGTERM may reach them a step apart."""
        if self.dist.dist is None:
            return
        flags = torch.tensor([self.control.should_save, self.control.should_training_stop], dtype=torch.float32)
        self.dist.dist.all_reduce(flags, op=self.dist.dist.ReduceOp.MAX)
        self.control.should_save, self.control.should_training_stop = bool(flags[0]), bool(flags[1])

    # -- rollouts --

    def _prompt_indices(self, step: int) -> list[int]:
        """This rank's prompts for ``step``: a seeded permutation per data epoch, cut into global batches (the last
        one wraps around to the start), so the data position is a function of the step."""
        n = len(self.train_prompts)
        epoch, index = divmod(step, self.steps_per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.settings.seed + epoch)).tolist()
        size = self.settings.batch_size
        start = index * size * self.dist.size + self.dist.rank * size
        return [order[(start + j) % n] for j in range(size)]

    def _queries(self, token_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids in token_ids)
        pad = self.settings.pad_token_id
        ids = torch.tensor([[pad] * (width - len(t)) + t for t in token_ids], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in token_ids], dtype=torch.long)
        return ids.to(self.device), mask.to(self.device)

    def _sample(self, token_ids: list[list[int]]) -> tuple[Batch, torch.Tensor, torch.Tensor]:
        """(batch of prompt + response, response mask, ended) sampled from the policy, ``micro_size`` at a time."""
        queries, query_mask = self._queries(token_ids)
        self.models.lm.eval()
        responses = []
        for start in range(0, len(token_ids), self.micro_size):
            part = slice(start, start + self.micro_size)
            responses.append(self.models.generate(queries[part], query_mask[part], self.generation_config))
        width = max(r.shape[1] for r in responses)
        pad = self.settings.pad_token_id
        response_ids = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1]), value=pad) for r in responses])
        mask, ended = core.response_mask(response_ids, self.settings.eos_token_ids)
        batch = Batch(torch.cat([queries, response_ids], dim=1),
                      torch.cat([query_mask, mask.long()], dim=1), queries.shape[1])  # fmt: skip
        return batch, mask, ended

    def _completions(self, batch: Batch, mask: torch.Tensor) -> list[str]:
        lengths = core.sequence_lengths(mask).tolist()
        return [
            self.tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)
            for row, n in zip(batch.responses, lengths, strict=True)
        ]

    @torch.no_grad()
    def _logprobs(self, batch: Batch, adapter: str | None) -> torch.Tensor:
        out = []
        for start in range(0, batch.input_ids.shape[0], self.micro_size):
            part = batch.rows(torch.arange(start, min(start + self.micro_size, batch.input_ids.shape[0])))
            with self.models.adapter(adapter):
                logits = self.models.response_logits(part)
            out.append(core.logprobs_of(logits, part.responses, self.config.temperature))
        return torch.cat(out)

    @torch.no_grad()
    def _values(self, batch: Batch) -> torch.Tensor:
        out = []
        for start in range(0, batch.input_ids.shape[0], self.micro_size):
            part = batch.rows(torch.arange(start, min(start + self.micro_size, batch.input_ids.shape[0])))
            out.append(self.models.values(part))
        return torch.cat(out)

    def _score(self, prompts: list[Messages], batch: Batch, mask: torch.Tensor,
               columns: dict[str, list[Any]]) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
        scores, extra = self.scorer(prompts, self._completions(batch, mask), columns)
        return scores.to(self.device, torch.float32), extra

    # -- one update --

    def _ppo_step(self, step: int) -> dict[str, float]:
        cfg = self.config
        prompts, token_ids, columns = self.train_prompts.take(self._prompt_indices(step),
                                                              self.settings.samples_per_prompt)  # fmt: skip
        batch, mask, ended = self._sample(token_ids)
        logprobs = self._logprobs(batch, POLICY)
        ref_logprobs = self._logprobs(batch, None)
        raw_scores, extra = self._score(prompts, batch, mask, columns)
        if self.normalizer.enabled and not self.normalizer.fitted:
            self.normalizer.fit(self.dist.cat(raw_scores))
            if self.value_head_from_reward_model:
                self.models.scale_value_head(self.normalizer.gain, self.normalizer.bias)
        values = self._values(batch) * mask
        scores = core.apply_missing_eos_penalty(self.normalizer(raw_scores), ended, cfg.missing_eos_penalty)
        kl = core.per_token_kl(logprobs, ref_logprobs, mask)
        kl_coef = self.kl_ctl.value
        rewards, non_score = core.token_rewards(scores, kl, mask, kl_coef)
        if cfg.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = core.gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = core.masked_whiten(advantages, mask)
        stats = self._optimise(batch, mask, logprobs, values, advantages, returns)
        self.lr_scheduler.step()

        mean_kl = float(self.dist.mean(kl.sum(dim=1).mean()))
        self.kl_ctl.update(mean_kl, self.rollout_size * self.dist.size)
        tokens = int(self.dist.mean(batch.attention_mask.sum().float()) * self.dist.size)
        self.state.num_input_tokens_seen = int(self.state.num_input_tokens_seen or 0) + tokens

        def mean(value: torch.Tensor) -> float:
            return float(self.dist.mean(value.float().mean()))

        metrics = {
            "loss": stats["loss"],
            "mean_reward": mean(raw_scores),
            "mean_reward_normalized": mean(scores),
            "kl": mean_kl,
            "kl_coef": kl_coef,
            "mean_non_score_reward": mean(non_score.sum(dim=1)),
            "policy_loss": stats["policy_loss"],
            "value_loss": stats["value_loss"],
            "policy_clipfrac": stats["policy_clipfrac"],
            "value_clipfrac": stats["value_clipfrac"],
            "approx_kl": stats["approx_kl"],
            "entropy": stats["entropy"],
            "value_explained_variance": core.explained_variance(values, returns, mask),
            "completions_mean_length": mean(mask.sum(dim=1)),
            "completions_clipped_ratio": mean((~ended).float()),
            "learning_rate": float(self.optimizer.param_groups[0]["lr"]),
        }
        metrics.update({k: float(self.dist.mean(torch.tensor(v))) for k, v in extra.items()})
        return metrics

    def _optimise(self, batch: Batch, mask: torch.Tensor, old_logprobs: torch.Tensor, old_values: torch.Tensor,
                  advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:  # fmt: skip
        cfg = self.config
        self.models.lm.train()  # dropout is off; train mode only switches gradient checkpointing on when asked
        sums: dict[str, float] = defaultdict(float)
        updates = 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(self.rollout_size)
            for mb_start in range(0, self.rollout_size, self.minibatch_size):
                minibatch = order[mb_start : mb_start + self.minibatch_size]
                for micro_start in range(0, self.minibatch_size, self.micro_size):
                    index = minibatch[micro_start : micro_start + self.micro_size].to(self.device)
                    part = batch.rows(index)
                    m = mask[index]
                    share = len(index) / self.minibatch_size
                    with self.models.adapter(POLICY):
                        logits = self.models.response_logits(part)
                    logprobs = core.logprobs_of(logits, part.responses, cfg.temperature)
                    policy, approx_kl = core.clipped_policy_loss(logprobs, old_logprobs[index], advantages[index], m,
                                                                 cfg.cliprange)  # fmt: skip
                    (policy.loss * share).backward()
                    with torch.no_grad():
                        entropy = core.masked_mean(core.entropy_from_logits(logits.detach().float()
                                                                            / cfg.temperature), m)  # fmt: skip
                    del logits
                    vpred = self.models.values(part)
                    value = core.clipped_value_loss(vpred, old_values[index], returns[index], m, cfg.cliprange_value)
                    (cfg.vf_coef * value.loss * share).backward()
                    for key, val in (
                        ("policy_loss", policy.loss), ("value_loss", value.loss), ("policy_clipfrac", policy.clipfrac),
                        ("value_clipfrac", value.clipfrac), ("approx_kl", approx_kl), ("entropy", entropy),
                    ):  # fmt: skip
                        sums[key] += float(val.detach()) * share
                self.dist.average_gradients(self.params)
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                updates += 1
        stats = {k: float(self.dist.mean(torch.tensor(v / updates))) for k, v in sums.items()}
        stats["loss"] = stats["policy_loss"] + cfg.vf_coef * stats["value_loss"]
        return stats

    # -- evaluation --

    @torch.no_grad()
    def _evaluate(self) -> dict[str, float]:
        """Mean raw score, KL to the reference (per response) and length of responses to the validation prompts,
        ``num_generations`` each, sampled as in training from a fixed seed; the training RNG is left untouched."""
        if self.valid_prompts is None or not len(self.valid_prompts):
            return {}
        n = len(self.valid_prompts)
        mine = list(range(self.dist.rank, n, self.dist.size))
        sums = torch.zeros(3, dtype=torch.float64)
        extra_sums: dict[str, float] = defaultdict(float)
        count = 0
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.settings.seed + 1_000_003 * (self.dist.rank + 1))
            for start in range(0, len(mine), self.settings.batch_size):
                index = mine[start : start + self.settings.batch_size]
                prompts, token_ids, columns = self.valid_prompts.take(index, self.settings.samples_per_prompt)
                batch, mask, _ = self._sample(token_ids)
                kl = core.per_token_kl(self._logprobs(batch, POLICY), self._logprobs(batch, None), mask)
                scores, extra = self._score(prompts, batch, mask, columns)
                rows = len(token_ids)
                sums += torch.tensor([float(scores.sum()), float(kl.sum()), float(mask.sum())], dtype=torch.float64)
                for key, value in extra.items():
                    extra_sums[key] += value * rows
                count += rows
        totals = sums.clone()
        counts = torch.tensor([float(count)], dtype=torch.float64)
        if self.dist.dist is not None:
            self.dist.dist.all_reduce(totals)
            self.dist.dist.all_reduce(counts)
        total = max(1.0, float(counts[0]))
        metrics = {
            "eval_reward": float(totals[0]) / total,
            "eval_kl": float(totals[1]) / total,
            "eval_completions_mean_length": float(totals[2]) / total,
        }
        for key, value in sorted(extra_sums.items()):
            metrics[f"eval_{key}"] = float(self.dist.mean(torch.tensor(value / max(1, count))))
        return metrics

    # -- checkpoints --

    def _rng_state(self) -> dict[str, Any]:
        _, keys, pos, has_gauss, cached = cast(tuple[Any, ...], np.random.get_state())
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": {
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "cpu": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @staticmethod
    def _set_rng_state(state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        npst = state["numpy"]
        np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                             npst["cached_gaussian"]))  # fmt: skip
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def _save_checkpoint(self) -> None:
        from safetensors.torch import save_file

        rng_states = self.dist.gather_objects(self._rng_state())
        if self.dist.rank != 0:
            return
        directory = Path(str(self.args.output_dir)) / f"checkpoint-{self.state.global_step}"
        directory.mkdir(parents=True, exist_ok=True)
        self.models.save_policy(directory)
        save_file(self.models.adapter_state(CRITIC), str(directory / CRITIC_FILE))
        save_file({k: v.detach().contiguous() for k, v in self.models.value_head.state_dict().items()},
                  str(directory / VALUE_HEAD_FILE))  # fmt: skip
        torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
        torch.save(self.lr_scheduler.state_dict(), directory / "scheduler.pt")
        torch.save(rng_states, directory / "rng_state.pth")
        state = {
            "global_step": self.state.global_step,
            "num_input_tokens_seen": int(self.state.num_input_tokens_seen or 0),
            "kl_controller": self.kl_ctl.state_dict(),
            "reward_normalizer": self.normalizer.state_dict(),
            "world_size": self.dist.size,
        }
        (directory / STATE_FILE).write_text(json.dumps(state, indent=2))

    def _load_checkpoint(self, directory: Path) -> None:
        from safetensors.torch import load_file

        state = json.loads((directory / STATE_FILE).read_text())
        self.models.load_adapter_state(POLICY, load_file(str(directory / POLICY_FILE)))
        self.models.load_adapter_state(CRITIC, load_file(str(directory / CRITIC_FILE)))
        self.models.value_head.load_state_dict(load_file(str(directory / VALUE_HEAD_FILE)))
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
        self.lr_scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.normalizer.load_state_dict(state["reward_normalizer"])
        self.state.global_step = int(state["global_step"])
        self.state.num_input_tokens_seen = int(state["num_input_tokens_seen"])
        self.state.epoch = self.state.global_step / self.steps_per_epoch
        rng_states = torch.load(directory / "rng_state.pth", weights_only=True)
        if self.dist.rank < len(rng_states):  # RNG last: nothing after it may draw random numbers
            self._set_rng_state(rng_states[self.dist.rank])
