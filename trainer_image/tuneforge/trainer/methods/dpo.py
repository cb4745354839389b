"""``dpo``: TRL DPOTrainer; with LoRA the frozen base (adapter disabled) is the reference model."""

from __future__ import annotations

from tuneforge.trainer.context import (
    BuiltTrainer,
    RunContext,
    count_params,
    lora_config,
    quantization_config,
    training_args_kwargs,
)
from tuneforge.trainer.data import ensure_chat_template
from tuneforge.trainer.methods import preference
from tuneforge.trainer.methods.sft import model_dtype
from tuneforge.trainer.models import load_causal_lm, load_tokenizer


def build(ctx: RunContext) -> BuiltTrainer:
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    hp = ctx.hp
    tokenizer = load_tokenizer(ctx.model_dir)
    ensure_chat_template(tokenizer)
    train, valid = preference.datasets(ctx, tokenizer)
    set_seed(ctx.spec.seed)
    model = load_causal_lm(ctx.model_dir, model_dtype(ctx), quantization_config(ctx))
    n_params = count_params(model)
    args = DPOConfig(
        **training_args_kwargs(ctx, rows=len(train), has_eval=valid is not None),
        beta=hp.beta,
        loss_type=[hp.loss_type],
        max_length=hp.max_length,
        pad_to_multiple_of=None,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=valid,
        processing_class=tokenizer,
        peft_config=lora_config(ctx, "CAUSAL_LM"),
    )
    # policy and reference forward on chosen and rejected: ~2x the SFT cost per token (ref is forward only)
    return BuiltTrainer(trainer, tokenizer, 8.0 * n_params, {"method": "dpo", "task": "causal_lm"})
