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


def _save_model(model: Any, tokenizer: Any, target: Path) -> Path:
    """Write ``model`` and ``tokenizer`` beside ``target`` and move them there at once (no half-written model)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    return _publish(tmp, target)


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
    return _save_model(model, tokenizer, target)


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
    return _save_model(model, tokenizer, target)


def make_judge_model(base: Path, directory: Path, reply: str = "7") -> Path:
    """The tiny peaked model fitted to answer every chat with ``reply`` and stop: a judge whose replies are scores.

    A few dozen full-batch steps on random prompts (seconds on a CPU); the engine serves it like any base model."""
    target = directory / f"tiny-judge-{reply}"
    if (target / "model.safetensors").is_file():
        return target
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base))
    rng = random.Random(0)
    words = ["rate", "the", "answer", "to", "hello", "what", "is", "two", "plus", "four", "blue", "colour", "name",
             "there", "hi", "score", "question", "x", "0", "10", "!", "?"]
    rows = []
    for _ in range(32):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 40)))
        head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False)
        tail = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((list(head), tail))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        optimizer.zero_grad()
        loss = torch.zeros(())
        for head, tail in rows:
            ids = torch.tensor([head + tail])
            labels = torch.tensor([[-100] * len(head) + tail])
            loss = loss + model(input_ids=ids, labels=labels).loss / len(rows)
        loss.backward()
        optimizer.step()
    model.eval()
    return _save_model(model, tokenizer, target)
