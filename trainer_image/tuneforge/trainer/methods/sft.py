"""``supervised``: TRL SFTTrainer on pre-tokenized rows whose labels mask everything but the trained turns."""

from __future__ import annotations

from typing import Any

from tuneforge.trainer.context import (
    BuiltTrainer,
    RunContext,
    count_params,
    lora_config,
    quantization_config,
    training_args_kwargs,
    use_gradient_checkpointing,
)
from tuneforge.trainer.data import Tokenized, tokenize_sft
from tuneforge.trainer.errors import BadInput
from tuneforge.trainer.models import load_causal_lm, load_tokenizer
from tuneforge.trainer.settings import trainer_settings


def _report_tokenized(ctx: RunContext, tok: Tokenized, role: str) -> None:
    if tok.truncated:
        ctx.reporter.warn(f"{tok.truncated} {role} examples were longer than max_length and were truncated")
    if tok.dropped:
        ctx.reporter.warn(f"{tok.dropped} {role} examples had no trainable tokens within max_length and were skipped")


def model_dtype(ctx: RunContext) -> Any:
    """LoRA on a GPU keeps the frozen base in half precision; full tuning keeps fp32 master weights."""
    import torch

    if ctx.device.cuda and ctx.spec.adapter.type != "full":
        return ctx.device.torch_dtype
    return torch.float32


def use_padding_free(ctx: RunContext) -> bool:
    """Padding-free batches: one flat sequence with position ids, no pad tokens, no cross-example attention
    (transformers derives a per-example block mask from the position ids; TRL disables the KV cache).

    Default on CUDA, where varlen attention makes it cheaper than padding; off on the CPU, where the flattened
    batch makes masked SDPA quadratic in the whole batch length (measured slower, see bench/README.md).
    ``packing=true`` implies it. ``TUNEFORGE_PADDING_FREE=0/1`` overrides (benchmarks).
    """
    forced = trainer_settings().padding_free
    if forced is not None:
        return forced or bool(ctx.hp.packing)
    return bool(ctx.hp.packing) or ctx.device.cuda


def use_group_by_length(ctx: RunContext, padding_free: bool) -> bool:
    """Opt-in (``TUNEFORGE_GROUP_BY_LENGTH=1``): draw padded batches of similar length together.

    Off by default: HF's length-grouped sampler draws from the global RNG, so a resumed run does not replay
    the interrupted run's batch order (the resume test catches it), and its measured CPU gain was within noise.
    """
    forced = trainer_settings().group_by_length
    return bool(forced) and not padding_free


def build(ctx: RunContext) -> BuiltTrainer:
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    spec, hp = ctx.spec, ctx.hp
    tokenizer = load_tokenizer(ctx.model_dir)
    train = tokenize_sft(tokenizer, ctx.train_format, ctx.train_rows, hp.max_length)
    _report_tokenized(ctx, train, "training")
    if not train.rows:
        raise BadInput("no training example has tokens to learn from within max_length")
    eval_ds = None
    if ctx.valid_rows:
        valid = tokenize_sft(tokenizer, ctx.valid_format or ctx.train_format, ctx.valid_rows, hp.max_length)
        _report_tokenized(ctx, valid, "validation")
        if valid.rows:
            eval_ds = Dataset.from_list(valid.rows)

    set_seed(spec.seed)
    quant = quantization_config(ctx)
    model = load_causal_lm(ctx.model_dir, model_dtype(ctx), quant)
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=use_gradient_checkpointing(hp, ctx.device)
        )
    n_params = count_params(model)
    padding_free = use_padding_free(ctx)
    common = training_args_kwargs(ctx, rows=len(train.rows), has_eval=eval_ds is not None)
    if use_group_by_length(ctx, padding_free):
        common["train_sampling_strategy"] = "group_by_length"
    if padding_free:
        common["include_num_input_tokens_seen"] = "all"  # no padding at all: every token is real
    ctx.notes.update(padding_free=padding_free, sampling=common.get("train_sampling_strategy", "random"))
    args = SFTConfig(
        **common,
        # rows are already truncated; padding-free without packing needs max_length=None
        max_length=hp.max_length if hp.packing or not padding_free else None,
        packing=bool(hp.packing),
        padding_free=padding_free,
        pad_to_multiple_of=None,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train.rows),
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(ctx, "CAUSAL_LM"),
    )
    return BuiltTrainer(
        trainer=trainer,
        tokenizer=tokenizer,
        flops_per_token=6.0 * n_params,
        manifest_extra={"method": "supervised", "task": "causal_lm"},
    )
