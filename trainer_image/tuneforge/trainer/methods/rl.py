"""``reinforcement``: GRPO or RLOO (TRL) on prompt-only data, rewarded by the job's grader; PPO (our own, TRL 1.x
has none) is built by :mod:`tuneforge.trainer.methods.ppo`.

``batch_size`` counts prompts per optimizer step; each prompt gets ``num_generations`` completions.
``kl_coef`` is TRL's ``beta``. On CUDA with vLLM installed, generation runs in vLLM (colocated).
"""

from __future__ import annotations

from typing import Any

from tuneforge.contracts.graders import RewardModelGrader, reference_fields
from tuneforge.trainer.context import (
    BuiltTrainer,
    RunContext,
    count_params,
    lora_config,
    quantization_config,
    starting_model,
    training_args_kwargs,
)
from tuneforge.trainer.data import ensure_chat_template
from tuneforge.trainer.device import has_module
from tuneforge.trainer.errors import BadInput
from tuneforge.trainer.graders import load_reward_model, make_reward
from tuneforge.trainer.methods.sft import model_dtype
from tuneforge.trainer.models import load_causal_lm, load_tokenizer


def _plain(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": m["role"], "content": m.get("content") or ""} for m in messages]


def _rows(rows: list[dict[str, Any]], reference_fields: list[str]) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(rows, start=1):
        item: dict[str, Any] = {"prompt": _plain(row["prompt"])}
        for reference_field in reference_fields:
            if reference_field not in row:
                raise BadInput(f"row {i} has no reference field {reference_field!r} for the grader")
            value = row[reference_field]
            item[reference_field] = value if isinstance(value, str) else str(value)
        out.append(item)
    return out


def build(ctx: RunContext) -> BuiltTrainer:
    from datasets import Dataset
    from transformers import set_seed

    spec, hp = ctx.spec, ctx.hp
    grader = spec.method.grader
    if grader is None:  # pragma: no cover - checked by the runner
        raise BadInput("a reinforcement job needs a grader")
    algorithm = spec.method.algorithm or "grpo"
    if algorithm == "ppo":
        from tuneforge.trainer.methods import ppo

        return ppo.build(ctx)
    num_generations = hp.num_generations or 4
    if num_generations < 2:
        raise BadInput("num_generations must be at least 2 (advantages compare completions of one prompt)")

    tokenizer = load_tokenizer(ctx.model_dir)
    ensure_chat_template(tokenizer)
    ref_fields = reference_fields(grader)
    train = Dataset.from_list(_rows(ctx.train_rows, ref_fields))
    valid = Dataset.from_list(_rows(ctx.valid_rows, ref_fields)) if ctx.valid_rows else None

    reward_funcs: list[Any]
    reward_tokenizers: list[Any] | None = None
    if isinstance(grader, RewardModelGrader):
        rm, rm_tokenizer = load_reward_model(grader, ctx.store, ctx.workdir, model_dtype(ctx))
        reward_funcs, reward_tokenizers = [rm], [rm_tokenizer]
    else:
        # one function even for a multi grader: the advantages must come from the combined score (TRL's
        # reward_weights could only express linear formulas); it logs its sub-grader means itself
        reward_funcs = [make_reward(grader)]

    set_seed(spec.seed)
    model = load_causal_lm(ctx.model_dir, model_dtype(ctx), quantization_config(ctx))
    model = starting_model(ctx, model)
    n_params = count_params(model)
    common = training_args_kwargs(ctx, rows=len(train), has_eval=valid is not None)
    common["per_device_train_batch_size"] = hp.batch_size * num_generations
    common["per_device_eval_batch_size"] = hp.batch_size * num_generations
    # GRPO/RLOO batches carry no input_ids for HF's token counter (it warned on every step); TRL logs num_tokens
    common["include_num_input_tokens_seen"] = "no"
    rl_kwargs: dict[str, Any] = {
        "beta": hp.kl_coef if hp.kl_coef is not None else 0.0,
        "num_generations": num_generations,
        "max_completion_length": hp.max_completion_length or 256,
        "temperature": hp.temperature or 1.0,
        "shuffle_dataset": True,
        # sample with the KV cache: it resolved to off here (seen with py-spy on CPU: use_cache=False, no cache),
        # so every new token re-ran the whole prompt + completion, quadratic in the completion length
        "generation_kwargs": {"use_cache": True},
    }
    if ctx.device.cuda and has_module("vllm"):
        rl_kwargs.update(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3)
    if algorithm == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        trainer_cls: Any = GRPOTrainer
        args: Any = GRPOConfig(**common, **rl_kwargs)
    elif algorithm == "rloo":
        from trl import RLOOConfig, RLOOTrainer

        trainer_cls = RLOOTrainer
        args = RLOOConfig(**common, **rl_kwargs)
    else:  # pragma: no cover - the JobSpec allows only grpo, rloo and ppo
        raise BadInput(f"unsupported reinforcement algorithm {algorithm!r}")
    trainer = trainer_cls(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=train,
        eval_dataset=valid,
        processing_class=tokenizer,
        reward_processing_classes=reward_tokenizers,
        peft_config=lora_config(ctx, "CAUSAL_LM"),
    )
    return BuiltTrainer(
        trainer,
        tokenizer,
        6.0 * n_params,
        {"method": "reinforcement", "algorithm": algorithm, "task": "causal_lm"},
    )
