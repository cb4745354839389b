"""Models built from their configurations with random weights, and their FLOPs per token.

The GPU machine reaches no model hub and carries at most 64 MiB, and throughput does not depend on the weights'
values: each model is a ``LlamaForCausalLM`` from a configuration (bench/gpu/plan.py) with the staged tokenizer's
vocabulary, randomly initialised and saved as bf16 safetensors (what Hub checkpoints hold), once per run.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from bench.gpu.plan import ModelShape

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def model_dir(work: Path, name: str) -> Path:
    return work / "models" / name


def build_model(shape: ModelShape, tokenizer_dir: Path, work: Path) -> dict[str, Any]:
    """Write ``work/models/{name}`` (config, bf16 safetensors, tokenizer files); returns what was built."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    start = time.perf_counter()
    target = model_dir(work, shape.name)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = LlamaConfig(
        **shape.config,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # random init of a billion parameters is seconds on the GPU, a minute on the CPU
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad
    )
    params = sum(p.numel() for p in model.parameters())
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, tmp / name)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {
        "label": shape.label,
        "path": str(target),
        "parameters": params,
        "matmul_parameters": matmul_parameters(json.loads((target / "config.json").read_text())),
        "config": shape.config,
        "vocab_size": len(tokenizer),
        "seconds": round(time.perf_counter() - start, 2),
    }


def matmul_parameters(config: dict[str, Any]) -> int:
    """Weights that take part in a matrix product per token: every linear layer and the LM head (the embedding
    lookup is no product; a tied LM head counts once, as the product it is)."""
    d = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv = config["num_key_value_heads"]
    hd = config.get("head_dim") or d // heads
    per_layer = d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * config["intermediate_size"]
    return int(config["num_hidden_layers"] * per_layer + d * config["vocab_size"])


def attention_flops_forward(config: dict[str, Any], mean_context: float) -> float:
    """Forward attention FLOPs per token (QK^T and AV) at a mean attended context of ``mean_context``."""
    heads = config["num_attention_heads"]
    hd = config.get("head_dim") or config["hidden_size"] // heads
    return 4.0 * config["num_hidden_layers"] * heads * hd * mean_context


def train_flops_per_token(config: dict[str, Any], mean_context: float, *, method: str, adapter: str) -> float:
    """Model FLOPs of one trained token (recomputation from gradient checkpointing is not counted: MFU's rule).

    Linear layers: forward 2N; backward 2N for the input gradients plus 2N for the weight gradients, which a
    LoRA run skips on its frozen base (LoRA's own small products are left out). Attention: forward A, backward
    2A. DPO adds the reference model's forward (2N + A) on the same tokens.
    """
    n = matmul_parameters(config)
    a = attention_flops_forward(config, mean_context)
    linear = (6.0 if adapter == "full" else 4.0) * n
    flops = linear + 3.0 * a
    if method == "dpo":
        flops += 2.0 * n + a
    return flops


def mean_attended_context(lengths: list[int]) -> float:
    """Mean number of positions a token attends to under a causal mask, over sequences of these lengths."""
    tokens = sum(lengths)
    if not tokens:
        return 0.0
    return sum(n * (n + 1) / 2 for n in lengths) / tokens
