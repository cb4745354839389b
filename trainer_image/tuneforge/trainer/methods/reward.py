"""``reward_model``: a sequence-classification model (one logit) trained on preference pairs (TRL RewardTrainer).

The published model is a LoRA adapter with the ``score`` head saved in full (``modules_to_save``) or, with
``adapter.type == "full"``, a whole ``*ForSequenceClassification`` checkpoint. ``manifest.json`` records
``task: sequence_classification`` so a later ``reinforcement`` job can load it as its grader.
"""

from __future__ import annotations

from tuneforge.trainer.context import (
    BuiltTrainer,
    RunContext,
    count_params,
    lora_config,
    starting_model,
    training_args_kwargs,
)
from tuneforge.trainer.data import ensure_chat_template
from tuneforge.trainer.methods import preference
from tuneforge.trainer.methods.sft import model_dtype
from tuneforge.trainer.models import load_sequence_classifier, load_tokenizer

TASK = "sequence_classification"



def build(ctx: RunContext) -> BuiltTrainer:
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    tokenizer = load_tokenizer(ctx.model_dir)
    ensure_chat_template(tokenizer)
    train, valid = preference.datasets(ctx, tokenizer)
    set_seed(ctx.spec.seed)
    model = load_sequence_classifier(ctx.model_dir, model_dtype(ctx), tokenizer.pad_token_id)
    model = starting_model(ctx, model)
    n_params = count_params(model)
    args = RewardConfig(
        **training_args_kwargs(ctx, rows=len(train), has_eval=valid is not None),
        max_length=ctx.hp.max_length,
        pad_to_multiple_of=None,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=valid,
        processing_class=tokenizer,
        peft_config=lora_config(ctx, "SEQ_CLS"),
    )
    return BuiltTrainer(trainer, tokenizer, 6.0 * n_params, {"method": "reward_model", "task": TASK})
