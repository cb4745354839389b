"""Models and adapters for the engine tests, built offline in seconds.

- ``make_peaked_model``: a tiny random Llama (the byte-level tokenizer and ChatML template of
  :mod:`tests.support.tiny_model`) initialised with a wide spread, so its next-token distributions are peaked:
  greedy answers then do not hinge on float rounding, and a batched answer can be compared token for token
  with the same request alone;
- ``make_lora``: a random LoRA adapter (PEFT's own format: adapter_config.json + adapter_model.safetensors)
  for a model directory; ``scale`` sets how far it moves the model (small for SmolLM2, so the tuned answer
  differs but stays fluent and still ends its turn).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tests.support.tiny_model import build_tokenizer


def _publish(tmp: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def make_peaked_model(directory: Path, init_range: float = 0.25) -> Path:
    target = directory / f"tiny-peaked-{init_range:g}"
    if (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        # ten times the usual init spread: logits spread over several units, so greedy choices are clear and
        # the text varies (the default init gives near-uniform logits and answers of repeated newlines)
        initializer_range=init_range,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".peaked-", dir=directory))
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    return _publish(tmp, target)


def make_lora(model_dir: Path, directory: Path, seed: int, *, scale: float = 1.0, r: int = 8,
              target_modules: list[str] | str = "all-linear", **config: Any) -> Path:
    """``config``: more LoraConfig fields (lora_alpha, use_rslora, rank_pattern, ...)."""
    name = f"lora-{model_dir.name}-s{seed}-x{scale:g}-r{r}"
    if target_modules != "all-linear" or config:
        key = repr((target_modules, sorted(config.items())))
        name += "-" + hashlib.sha256(key.encode()).hexdigest()[:10]
    target = directory / name
    if (target / "adapter_model.safetensors").is_file():
        return target
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    torch.manual_seed(seed)
    config.setdefault("lora_alpha", 2 * r)
    peft_model = get_peft_model(model, LoraConfig(r=r, target_modules=target_modules, init_lora_weights=False,
                                                  **config))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".lora-", dir=directory))
    peft_model.save_pretrained(str(tmp))
    return _publish(tmp, target)


def make_reward_model(model_dir: Path, directory: Path, seed: int = 3) -> Path:
    """A whole sequence classifier (one score) on ``model_dir``'s weights with a random score head: what a
    ``reward_model`` job with ``adapter.type: full`` publishes (plus the manifest's ``task``)."""
    target = directory / f"{model_dir.name}-reward-{seed}"
    if (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=1,
                                                               pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():  # a head that tells texts apart (the default init scores everything near zero)
        model.score.weight.normal_(0.0, 1.0)
    tmp = Path(tempfile.mkdtemp(prefix=".reward-", dir=directory))
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    return _publish(tmp, target)
