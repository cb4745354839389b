"""``reinforcement`` with ``algorithm: ppo``: PPO with a critic against the job's grader (a reward model or a
rule), our own implementation on torch + transformers + PEFT (TRL 1.x has no PPOTrainer).

The pieces: :mod:`ppo_core` (the algorithm as tensor functions), :mod:`ppo_models` (policy, critic, reference and
reward model on one base), :mod:`ppo_rewards` (scoring), :mod:`ppo_trainer` (the loop and its checkpoints).

Hyperparameters: the reinforcement method's (:class:`tuneforge.contracts.hyperparameters.
ReinforcementHyperparameters`), resolved for ``ppo`` in the JobSpec: ``kl_coef`` is the starting beta,
``max_completion_length`` the response length, ``batch_size`` counts prompts per step (per rank), each sampled
``num_generations`` times; PPO's own fields (``target_kl``, ``gamma``, ``lam``, ``cliprange``, ...) are set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuneforge.contracts.graders import RewardModelGrader, reference_fields
from tuneforge.contracts.hyperparameters import ReinforcementHyperparameters
from tuneforge.contracts.jobspec import JobSpec
from tuneforge.trainer.context import (
    BuiltTrainer,
    RunContext,
    count_params,
    lora_config,
    quantization_config,
    training_args_kwargs,
    use_gradient_checkpointing,
)
from tuneforge.trainer.data import ensure_chat_template
from tuneforge.trainer.errors import BadInput
from tuneforge.trainer.graders import make_reward
from tuneforge.trainer.launch import world


@dataclass(frozen=True)
class PPOConfig:
    """PPO's hyperparameters as the loop uses them (:func:`ppo_config` reads them from the job; the defaults here
    are the contract's, for benchmarks and tests that drive the loop directly)."""

    init_kl_coef: float = 0.15
    target_kl: float | None = 6.0  # None: a fixed beta
    kl_horizon: int = 10_000
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    ppo_epochs: int = 4
    num_mini_batches: int = 1
    temperature: float = 0.7
    response_length: int = 53
    missing_eos_penalty: float | None = 1.0  # None or 0: none
    normalize_reward: bool = True
    whiten_rewards: bool = False
    whiten_advantages: bool = True
    value_head_init: str = "auto"
    max_grad_norm: float | None = 1.0  # None: no clipping


def ppo_config(hp: Any) -> PPOConfig:
    """The loop's settings from the job's hyperparameters (resolved for ppo; resolved again here, idempotently,
    so a hand-written JobSpec with nulls still gets the contract's defaults)."""
    if not isinstance(hp, ReinforcementHyperparameters):
        raise BadInput("algorithm 'ppo' needs the reinforcement method's hyperparameters")
    hp = hp.for_algorithm("ppo")
    return PPOConfig(
        init_kl_coef=float(hp.kl_coef), target_kl=float(hp.target_kl or 0.0) or None,
        kl_horizon=int(hp.kl_horizon or 1),
        gamma=float(hp.gamma or 0.0), lam=float(hp.lam or 0.0), cliprange=float(hp.cliprange or 0.0),
        cliprange_value=float(hp.cliprange_value or 0.0), vf_coef=float(hp.vf_coef or 0.0),
        ppo_epochs=int(hp.ppo_epochs or 1), num_mini_batches=int(hp.num_mini_batches or 1),
        temperature=float(hp.temperature), response_length=int(hp.max_completion_length),
        missing_eos_penalty=float(hp.missing_eos_penalty or 0.0) or None,
        normalize_reward=bool(hp.normalize_reward), whiten_rewards=bool(hp.whiten_rewards),
        whiten_advantages=bool(hp.whiten_advantages), value_head_init=str(hp.value_head_init),
        max_grad_norm=float(hp.max_grad_norm or 0.0) or None,
    )  # fmt: skip


def samples_per_prompt(hp: Any) -> int:
    return int(hp.num_generations) if hp.num_generations != "auto" else 1


def check(spec: JobSpec) -> PPOConfig:
    """What can be refused before any download (the contract checks the rest when the JobSpec is read): the
    adapter type and how the batch divides (again: ``batch_size`` may have been ``auto``)."""
    hp = spec.hyperparameters
    config = ppo_config(hp)
    if spec.adapter.type == "full":
        raise BadInput("algorithm 'ppo' trains LoRA adapters (policy and critic share one copy of the base "
                       "weights); use adapter type 'lora' or 'qlora'")  # fmt: skip
    rollout = int(hp.batch_size) * samples_per_prompt(hp)  # int(): resolved in every JobSpec
    if rollout % config.num_mini_batches:
        raise BadInput(f"ppo: num_mini_batches {config.num_mini_batches} must divide the rollout batch "
                       f"(batch_size {hp.batch_size} x num_generations {samples_per_prompt(hp)} = {rollout})")
    minibatch = rollout // config.num_mini_batches
    if minibatch % hp.gradient_accumulation_steps:
        raise BadInput(f"ppo: gradient_accumulation_steps {hp.gradient_accumulation_steps} must divide the "
                       f"minibatch of {minibatch} responses")
    if hp.max_length - config.response_length < 1:
        raise BadInput(f"ppo: max_length {hp.max_length} leaves no room for a prompt before "
                       f"{config.response_length} response tokens")
    return config


def _plain(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": m["role"], "content": m.get("content") or ""} for m in messages]


def _prompts(ctx: RunContext, rows: list[dict[str, Any]], tokenizer: Any, fields: list[str], max_prompt: int,
             role: str) -> Any:  # fmt: skip
    from tuneforge.trainer.methods.ppo_trainer import Prompts

    messages, token_ids = [], []
    columns: dict[str, list[Any]] = {f: [] for f in fields}
    cut = 0
    for i, row in enumerate(rows, start=1):
        prompt = _plain(row["prompt"])
        for field in fields:
            if field not in row:
                raise BadInput(f"{role} row {i} has no reference field {field!r} for the grader")
            value = row[field]
            columns[field].append(value if isinstance(value, str) else str(value))
        ids = list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False))  # fmt: skip
        if len(ids) > max_prompt:
            ids, cut = ids[-max_prompt:], cut + 1
        messages.append(prompt)
        token_ids.append(ids)
    if cut:
        ctx.reporter.warn(f"{cut} of {len(rows)} {role} prompts were longer than max_length minus the response "
                          f"length ({max_prompt} tokens); their beginning was left out")  # fmt: skip
    return Prompts(messages, token_ids, columns)


def _init_distributed(cuda: bool) -> Any:
    import os

    import torch
    import torch.distributed as dist

    _, size = world()
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def build(ctx: RunContext) -> BuiltTrainer:
    import torch
    from transformers import TrainingArguments, set_seed

    from tuneforge.trainer.graders import download_reward_model, load_downloaded_reward_model
    from tuneforge.trainer.methods import ppo_models
    from tuneforge.trainer.methods.ppo_rewards import ModelScorer, RuleScorer, Scorer
    from tuneforge.trainer.methods.ppo_trainer import PPOTrainer, Settings
    from tuneforge.trainer.methods.sft import model_dtype
    from tuneforge.trainer.models import load_causal_lm, load_tokenizer, resolve_model

    spec, hp = ctx.spec, ctx.hp
    grader = spec.method.grader
    if grader is None:  # pragma: no cover - checked by the runner
        raise BadInput("a reinforcement job needs a grader")
    config = check(spec)
    device = _init_distributed(ctx.device.cuda)
    _, world_size = world()

    tokenizer = load_tokenizer(ctx.model_dir)
    ensure_chat_template(tokenizer)
    fields = reference_fields(grader)
    max_prompt = hp.max_length - config.response_length
    train = _prompts(ctx, ctx.train_rows, tokenizer, fields, max_prompt, "training")
    if not len(train):
        raise BadInput("the training file has no prompts")
    valid = _prompts(ctx, ctx.valid_rows, tokenizer, fields, max_prompt, "validation") if ctx.valid_rows else None

    set_seed(spec.seed)
    quant = quantization_config(ctx)
    lm = load_causal_lm(ctx.model_dir, model_dtype(ctx), quant)
    if quant is None:
        lm.to(device)
    n_params = count_params(lm)
    if use_gradient_checkpointing(hp, ctx.device):
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    models = ppo_models.SharedBaseModels(lm, lora_config(ctx, "CAUSAL_LM"))

    rollout = hp.batch_size * samples_per_prompt(hp)
    micro = rollout // config.num_mini_batches // hp.gradient_accumulation_steps
    scorer: Scorer
    rm_shares_base = False
    rm_dir = None
    if isinstance(grader, RewardModelGrader):
        rm_dir, manifest = download_reward_model(grader, ctx.store, ctx.workdir)
        rm_tokenizer = load_tokenizer(rm_dir)
        ensure_chat_template(rm_tokenizer)
        rm_shares_base = (rm_dir / "adapter_config.json").is_file() and (
            resolve_model(str(manifest["base_model"]), ctx.store).resolve() == ctx.model_dir.resolve()
        )
        if rm_shares_base:
            weights, head = ppo_models.split_reward_adapter(rm_dir)
            models.add_reward(ppo_models.lora_config_from(rm_dir), weights, head)
            pad_id = rm_tokenizer.pad_token_id

            def rm_forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                return models.reward_scores(ids, mask, pad_id)

            scorer = ModelScorer(rm_forward, rm_tokenizer, device, micro)
        else:
            rm = ppo_models.SeparateRewardModel(
                load_downloaded_reward_model(rm_dir, manifest, ctx.store, model_dtype(ctx)).to(device))
            scorer = ModelScorer(rm.scores, rm_tokenizer, device, micro)
    else:
        scorer = RuleScorer(make_reward(grader))

    value_init = config.value_head_init
    if value_init == "auto":
        value_init = "reward_model" if rm_shares_base else "zero"
    if value_init == "reward_model":
        if not rm_shares_base or rm_dir is None:
            raise BadInput("value_head_init 'reward_model' needs a reward_model grader whose LoRA reward model was "
                           "trained on the same base model as this job")  # fmt: skip
        weights, head = ppo_models.split_reward_adapter(rm_dir)
        models.add_critic(ppo_models.lora_config_from(rm_dir), weights, head)
    else:
        models.add_critic(lora_config(ctx, "CAUSAL_LM"))
    ppo_models.disable_dropout(lm)

    steps_per_epoch = math.ceil(len(train) / (hp.batch_size * world_size))
    total_steps = hp.max_steps if hp.max_steps and hp.max_steps > 0 else steps_per_epoch * hp.n_epochs
    warmup = int(hp.warmup_ratio) if hp.warmup_ratio >= 1 else math.ceil(hp.warmup_ratio * total_steps)
    kwargs = training_args_kwargs(ctx, rows=len(train), has_eval=valid is not None)
    for key in ("fsdp", "fsdp_config", "use_liger_kernel"):  # the loop replicates LoRA state itself
        kwargs.pop(key, None)
    eos_ids = {tokenizer.eos_token_id}
    generation_eos = getattr(lm.generation_config, "eos_token_id", None)
    eos_ids.update(generation_eos if isinstance(generation_eos, list) else [generation_eos])
    settings = Settings(
        batch_size=hp.batch_size,
        samples_per_prompt=samples_per_prompt(hp),
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        total_steps=total_steps,
        seed=spec.seed,
        learning_rate=hp.learning_rate,
        weight_decay=hp.weight_decay,
        lr_scheduler=hp.lr_scheduler,
        warmup_steps=warmup,
        eos_token_ids=sorted(i for i in eos_ids if i is not None),
        pad_token_id=int(tokenizer.pad_token_id),
    )
    trainer = PPOTrainer(
        models=models, scorer=scorer, tokenizer=tokenizer, config=config, settings=settings,
        args=TrainingArguments(**kwargs), train=train, valid=valid, device=device,
    )  # fmt: skip
    trainer.value_head_from_reward_model = value_init == "reward_model"
    reward = ("reward model adapter on the shared base" if rm_shares_base
              else "reward model loaded separately" if grader.type == "reward_model" else f"{grader.type} grader")
    ctx.notes.update(
        algorithm="ppo", rollout=f"{hp.batch_size}x{samples_per_prompt(hp)}", response_length=config.response_length,
        reward=reward, value_head_init=value_init, kl=(f"adaptive beta0={config.init_kl_coef} target={config.target_kl}"
                                                       if config.target_kl else f"fixed beta={config.init_kl_coef}"),
    )  # fmt: skip
    # per rollout token: sampling, policy, reference, critic and reward forwards (~2N each), then per PPO epoch a
    # policy and a critic forward+backward (~6N each): a rough count, for MFU only
    flops = (10.0 + 12.0 * config.ppo_epochs) * n_params
    return BuiltTrainer(trainer, tokenizer, flops, {"method": "reinforcement", "algorithm": "ppo",
                                                    "task": "causal_lm"})  # fmt: skip
