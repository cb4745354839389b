"""What the GPU run measures, at which sizes, in which order and with which time budgets.

The same plan at two sizes: the GPU plan (one H200, under 8 minutes in all) and the dry-run plan (tiny models,
a few steps, every check through the same code, on the CPU in CI). Each *unit* is one worker process with its
own time budget; it writes one result per *item* it names (the orchestrator marks items a killed or crashed
unit did not write).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: the architectures measured; vocabulary and special tokens come from the tokenizer (SmolLM2's, 49,152 tokens)
SMOLLM2_135M: dict[str, Any] = {
    # HuggingFaceTB/SmolLM2-135M-Instruct's config.json (the bundled model's, converted from its GGUF)
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}
LLAMA_1B: dict[str, Any] = {
    # meta-llama/Llama-3.2-1B's shape (with SmolLM2's 49,152-token vocabulary: 1.07 B parameters, not 1.24 B)
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}
#: dry-run stand-ins: same code paths, seconds on two CPU cores
TINY_A: dict[str, Any] = {**SMOLLM2_135M, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
TINY_B: dict[str, Any] = {**LLAMA_1B, "hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24}


@dataclass(frozen=True)
class ModelShape:
    name: str
    label: str
    config: dict[str, Any]


@dataclass(frozen=True)
class TrainSize:
    batch_size: int
    steps: int
    max_length: int
    #: learning rate per adapter type (irrelevant to speed; sane values so the loss moves)
    lr: dict[str, float]

    def rows(self) -> int:
        return self.batch_size * self.steps


@dataclass(frozen=True)
class Unit:
    name: str
    check: str
    budget_s: float
    #: result names this unit writes (under its check)
    items: tuple[str, ...]
    args: dict[str, Any] = field(default_factory=dict)


#: the trainer's GPU options, measured one at a time against "plain" (all four off); each tuple is one worker:
#: Liger patches transformers' modules process-wide and torch.compile leaves compiled graphs behind, so each
#: runs in a process of its own
OPTION_GROUPS: tuple[tuple[str, ...], ...] = (
    ("plain", "padding_free", "gradient_checkpointing"),
    ("liger",),
    ("torch_compile",),
)
#: options that need CUDA (skipped, with the reason recorded, in the dry run and on the CPU)
GPU_ONLY_OPTIONS = {
    "liger": "Liger's kernels are Triton kernels: CUDA only",
    "torch_compile": "torch.compile is measured on the GPU only (compiling on two CPU cores takes minutes)",
}
METHODS = ("sft", "dpo")
SIDES = ("trl", "tuneforge")
ADAPTERS = ("lora", "full")


@dataclass(frozen=True)
class Plan:
    dry_run: bool
    models: dict[str, ModelShape]
    train: dict[str, dict[str, TrainSize]]  # method -> model -> size
    #: method -> the (model, adapter) pairs trained, each by both sides
    train_configs: dict[str, tuple[tuple[str, str], ...]]
    options_model: str
    options_size: TrainSize
    serving_models: tuple[str, ...]
    concurrency: tuple[int, ...]
    new_tokens: int
    serving_rounds: int
    #: optimizer steps left out of the steady-state tokens/s (CUDA/cuBLAS/Triton warm-up, allocator growth)
    warmup_steps: int
    #: the whole run; a unit gets min(its budget, what is left)
    total_budget_s: float
    budgets: dict[str, float]
    serving_engines: tuple[str, ...] = ("transformers", "tuneforge")

    def train_item(self, method: str, model: str, adapter: str, side: str) -> str:
        return f"{model}-{adapter}-{side}"

    def units(self) -> list[Unit]:
        units = [
            Unit("device", "device", self.budgets["device"], ("device",)),
            Unit("models", "models", self.budgets["models"], tuple(self.models)),
        ]
        for method in METHODS:
            for side in SIDES:
                configs = list(self.train_configs[method])
                units.append(Unit(
                    f"{method}-{side}", method, self.budgets[f"{method}-{side}"],
                    tuple(self.train_item(method, m, a, side) for m, a in configs),
                    {"method": method, "side": side, "configs": configs},
                ))
        units.append(Unit(
            "serving", "serving", self.budgets["serving"],
            tuple(f"{m}-{e}-c{c}" for m in self.serving_models for e in self.serving_engines for c in self.concurrency),
        ))
        for group in OPTION_GROUPS:
            name = "options-" + ("base" if group[0] == "plain" else group[0].replace("_", "-"))
            units.append(Unit(name, "options", self.budgets[name], group, {"variants": list(group)}))
        return units


def make_plan(dry_run: bool) -> Plan:
    if dry_run:
        tiny = TrainSize(batch_size=2, steps=3, max_length=160, lr={"lora": 2e-4, "full": 2e-5})
        models = {
            "smollm2-135m": ModelShape("smollm2-135m", "tiny stand-in for the SmolLM2-135M configuration", TINY_A),
            "llama-1b": ModelShape("llama-1b", "tiny stand-in for the Llama-3.2-1B-shaped configuration", TINY_B),
        }
        return Plan(
            dry_run=True,
            models=models,
            train={"sft": dict.fromkeys(models, tiny), "dpo": dict.fromkeys(models, tiny)},
            # both models and both adapters in two SFT runs per side (and so the run-after-run path), one DPO run
            train_configs={"sft": (("smollm2-135m", "lora"), ("llama-1b", "full")), "dpo": (("smollm2-135m", "lora"),)},
            options_model="llama-1b",
            options_size=tiny,
            serving_models=tuple(models),
            concurrency=(1, 4, 16),
            new_tokens=4,
            serving_rounds=1,
            warmup_steps=1,
            total_budget_s=1500,
            budgets=dict.fromkeys(
                ["device", "models", "sft-trl", "sft-tuneforge", "dpo-trl", "dpo-tuneforge", "serving",
                 "options-base", "options-liger", "options-torch-compile"], 300.0),
        )
    models = {
        "smollm2-135m": ModelShape("smollm2-135m", "SmolLM2-135M configuration, random weights", SMOLLM2_135M),
        "llama-1b": ModelShape("llama-1b", "Llama-3.2-1B shape, SmolLM2 vocabulary (1.07 B), random weights",
                               LLAMA_1B),
    }
    sft_lr = {"lora": 2e-4, "full": 2e-5}
    dpo_lr = {"lora": 5e-5, "full": 5e-7}
    return Plan(
        dry_run=False,
        models=models,
        train={
            "sft": {"smollm2-135m": TrainSize(16, 30, 512, sft_lr), "llama-1b": TrainSize(16, 20, 512, sft_lr)},
            "dpo": {"smollm2-135m": TrainSize(8, 20, 512, dpo_lr), "llama-1b": TrainSize(8, 15, 512, dpo_lr)},
        },
        train_configs=dict.fromkeys(METHODS, tuple((m, a) for m in models for a in ADAPTERS)),
        options_model="llama-1b",
        options_size=TrainSize(16, 20, 512, sft_lr),
        serving_models=tuple(models),
        concurrency=(1, 4, 16),
        new_tokens=128,
        serving_rounds=2,
        warmup_steps=3,
        # the device call's limit is 600 s; this leaves time for installing the wheels and the version check
        total_budget_s=460,
        budgets={
            "device": 30, "models": 60,
            "sft-trl": 80, "sft-tuneforge": 100, "dpo-trl": 80, "dpo-tuneforge": 100,
            "serving": 60,
            # last: it gets what is left of the total (compilation alone can take a minute)
            "options-base": 70, "options-liger": 35, "options-torch-compile": 120,
        },
    )
