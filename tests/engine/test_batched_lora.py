"""The engine's batched LoRA layers (tuneforge.engine.lora) against PEFT's reference, in process.

The reference for every row is a ``PeftModel`` holding only that row's adapter (or the plain base model), run
on that row alone. Adapters differ in rank (2 to 16), targets (all linear layers, attention only, MLP only),
scaling (alpha/r, rsLoRA, per-module rank and alpha patterns), so a batch that mixes them exercises padded
ranks, zero slots and per-slot scales. The tiny peaked model keeps all of it a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.engine_models import make_lora
from tuneforge.engine.adapters import BASE, AdapterSet
from tuneforge.engine.batcher import Finish
from tuneforge.engine.engine import Engine, EngineConfig
from tuneforge.engine.errors import BadRequest
from tuneforge.engine.protocol import parse_completion

pytestmark = pytest.mark.timeout(300)

KERNELS = ["segments", "bmm", "peft"]
PROMPTS = [[5, 9, 14, 3, 22, 8], [40, 41], [7, 7, 19, 2, 60, 33, 12, 9, 10], [3, 4, 5, 6]]


@pytest.fixture(scope="module")
def mixed_loras(model_root: Path, peaked_model: Path) -> dict[str, Path]:
    return {
        "all_r4": make_lora(peaked_model, model_root, 11, r=4),
        "attn_r16_rslora": make_lora(peaked_model, model_root, 12, r=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                     use_rslora=True, lora_alpha=8),
        "mlp_r8_patterns": make_lora(peaked_model, model_root, 13, r=8,
                                     target_modules=["gate_proj", "up_proj", "down_proj"],
                                     rank_pattern={"down_proj": 2}, alpha_pattern={"up_proj": 3}),
        "qk_r2": make_lora(peaked_model, model_root, 14, r=2, target_modules=["q_proj", "k_proj"], lora_alpha=5),
    }


def _base(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    return model


@pytest.fixture(scope="module")
def references(peaked_model: Path, mixed_loras: dict[str, Path]) -> dict[str, Any]:
    """Per adapter name (BASE: none), a model with only that adapter."""
    from peft import PeftModel

    refs: dict[str, Any] = {BASE: _base(peaked_model)}
    for name, path in mixed_loras.items():
        refs[name] = PeftModel.from_pretrained(_base(peaked_model), str(path), is_trainable=False).eval()
    return refs


def _logits_alone(model: Any, prompt: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits: torch.Tensor = model(input_ids=torch.tensor([prompt])).logits[0]
    return logits


def _logits_batched(adapters: AdapterSet, prompts: list[list[int]], names: list[str]) -> list[torch.Tensor]:
    """One left-padded forward pass for the whole batch, as the batcher's prefill does it."""
    length = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), length), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = torch.tensor(p)
        mask[i, length - len(p):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        kwargs = adapters.select(names)
        logits = adapters.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs).logits
    return [logits[i, length - len(p):] for i, p in enumerate(prompts)]


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_mixed_batch_matches_each_adapter_alone(kernel: str, peaked_model: Path, mixed_loras: dict[str, Path],
                                                 references: dict[str, Any]) -> None:
    adapters = AdapterSet(_base(peaked_model), max_loaded=4, base_template=None, lora_kernel=kernel)
    for name, path in mixed_loras.items():
        adapters.register(adapters.validate(name, str(path)))
    adapters.ensure(set(mixed_loras))
    # rows out of adapter order, the same adapter twice, base rows between: every row its own prompt length
    names = [BASE, "qk_r2", "all_r4", "mlp_r8_patterns", BASE, "attn_r16_rslora", "all_r4", "qk_r2"]
    prompts = [PROMPTS[i % len(PROMPTS)][: 2 + i] for i in range(len(names))]
    got = _logits_batched(adapters, prompts, names)
    for name, prompt, logits in zip(names, prompts, got, strict=True):
        want = _logits_alone(references[name], prompt)
        torch.testing.assert_close(logits, want, atol=2e-5, rtol=1e-5, msg=f"row with {name}: logits differ")
    # the adapters do change the answer (the comparison above is not base against base)
    for name in mixed_loras:
        moved = _logits_alone(references[name], PROMPTS[0]) - _logits_alone(references[BASE], PROMPTS[0])
        assert moved.abs().max() > 0.1, name
    # a batch of base rows only and one of a single adapter take the short paths: same answers
    for only in (BASE, "attn_r16_rslora"):
        got = _logits_batched(adapters, PROMPTS, [only] * len(PROMPTS))
        for prompt, logits in zip(PROMPTS, got, strict=True):
            torch.testing.assert_close(logits, _logits_alone(references[only], prompt), atol=2e-5, rtol=1e-5)


def test_eviction_and_reload_keep_outputs_identical(peaked_model: Path, mixed_loras: dict[str, Path]) -> None:
    """Two slots, four adapters: every load evicts; the rank grows from 2 to 16 while others are loaded."""
    adapters = AdapterSet(_base(peaked_model), max_loaded=2, base_template=None)
    for name, path in mixed_loras.items():
        adapters.register(adapters.validate(name, str(path)))
    order = ["qk_r2", "all_r4", "attn_r16_rslora", "mlp_r8_patterns", "qk_r2", "attn_r16_rslora", "all_r4",
             "mlp_r8_patterns"]
    seen: dict[str, torch.Tensor] = {}
    for name in order:
        adapters.ensure({name})
        assert adapters.stack is not None and len(adapters.stack.slot_of) <= 2
        batch = _logits_batched(adapters, [PROMPTS[2], PROMPTS[0]], [name, BASE])
        if name in seen:
            assert torch.equal(batch[0], seen[name]), f"{name} changed after eviction and reload"
        seen[name] = batch[0]
    assert adapters.evictions == len(order) - 2
    assert adapters.stack is not None and adapters.stack.rank == 16
    # an evicted adapter's slot was zeroed: base rows still equal the plain model
    base = _logits_batched(adapters, [PROMPTS[2]], [BASE])[0]
    torch.testing.assert_close(base, _logits_alone(_base(peaked_model), PROMPTS[2]), atol=1e-6, rtol=0)


def _tampered(src: Path, dst: Path, **config: Any) -> Path:
    shutil.copytree(src, dst)
    data = json.loads((dst / "adapter_config.json").read_text())
    data.update(config)
    (dst / "adapter_config.json").write_text(json.dumps(data))
    return dst


@pytest.mark.parametrize(("config", "needle"), [
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"lora_bias": True}, "a LoRA bias"),
    ({"bias": "all"}, "trained biases"),
    ({"trainable_token_indices": [1, 2]}, "trainable tokens"),
])
def test_adapters_the_batched_layers_cannot_compute_are_refused(config: dict[str, Any], needle: str, tmp_path: Path,
                                                               peaked_model: Path,
                                                               mixed_loras: dict[str, Path]) -> None:
    adapters = AdapterSet(_base(peaked_model), max_loaded=2, base_template=None)
    path = _tampered(mixed_loras["all_r4"], tmp_path / "bad", **config)
    with pytest.raises(BadRequest) as info:
        adapters.validate("bad", str(path))
    assert needle in info.value.message and "'bad'" in info.value.message


def test_a_rank_that_contradicts_the_config_fails_cleanly(tmp_path: Path, peaked_model: Path,
                                                          mixed_loras: dict[str, Path]) -> None:
    model = _base(peaked_model)
    adapters = AdapterSet(model, max_loaded=2, base_template=None)
    adapters.register(adapters.validate("good", str(mixed_loras["qk_r2"])))
    adapters.ensure({"good"})
    before = _logits_batched(adapters, [PROMPTS[0]], ["good"])[0]
    path = _tampered(mixed_loras["all_r4"], tmp_path / "liar", r=8, lora_alpha=16)
    adapters.register(adapters.validate("liar", str(path)))  # the shapes fit the model; the rank does not
    with pytest.raises(BadRequest, match=r"rank 4 in the weights, 8 in adapter_config\.json"):
        adapters.ensure({"liar"})
    assert list(adapters.loaded) == ["good"]
    assert torch.equal(_logits_batched(adapters, [PROMPTS[0]], ["good"])[0], before)


def _reference_greedy(model: Any, prompt: list[int], max_new: int, eos: set[int]) -> list[int]:
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(max_new):
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if token in eos:
                break
            ids.append(token)
    return ids[len(prompt):]


async def _complete_all(engine: Engine, jobs: list[tuple[str, list[int]]], max_tokens: int) -> list[str]:
    async def one(model: str, prompt: list[int]) -> str:
        spec = parse_completion({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
                                max_n=4, vocab_size=engine.vocab_size)
        text = ""
        async for event in engine.run(engine.prepare(spec)):
            if isinstance(event, Finish):
                text = event.text
        return text

    return list(await asyncio.gather(*(one(m, p) for m, p in jobs)))


@pytest.mark.parametrize("kernel", ["segments", "bmm"])
def test_engine_greedy_answers_in_a_mixed_batch_equal_peft_alone(kernel: str, peaked_model: Path,
                                                                 mixed_loras: dict[str, Path],
                                                                 references: dict[str, Any]) -> None:
    """Through the batcher (prefill, decode steps, rows joining and leaving) with three of four slots in use."""
    engine = Engine(EngineConfig(model_dir=peaked_model, served_name="tiny", max_loras=3, max_batch=8,
                                 lora_kernel=kernel))
    try:
        async def scenario() -> tuple[list[str], list[str]]:
            for name, path in mixed_loras.items():
                assert await engine.load_adapter(name, str(path))
            jobs = [("tiny", PROMPTS[0]), ("qk_r2", PROMPTS[1]), ("all_r4", PROMPTS[2]), ("qk_r2", PROMPTS[3]),
                    ("attn_r16_rslora", PROMPTS[0]), ("tiny", PROMPTS[2])]
            first = await _complete_all(engine, jobs, 12)
            # the fourth adapter evicts one of those; then they come back
            later = await _complete_all(engine, [("mlp_r8_patterns", PROMPTS[1]), *jobs], 12)
            return first, later

        first, later = asyncio.run(scenario())
        jobs = [("tiny", PROMPTS[0]), ("qk_r2", PROMPTS[1]), ("all_r4", PROMPTS[2]), ("qk_r2", PROMPTS[3]),
                ("attn_r16_rslora", PROMPTS[0]), ("tiny", PROMPTS[2])]
        want = []
        for model, prompt in [("mlp_r8_patterns", PROMPTS[1]), *jobs]:
            ref = references[BASE if model == "tiny" else model]
            want.append(engine.tokenizer.decode(_reference_greedy(ref, prompt, 12, engine.eos_ids),
                                                skip_special_tokens=True))
        assert first == want[1:]
        assert later == want
        assert len(set(want)) >= 5  # the adapters answer differently
        assert engine.adapters.evictions >= 1
    finally:
        engine.stop()


def test_no_free_slot_while_every_adapter_runs_is_a_clear_503(peaked_model: Path,
                                                              mixed_loras: dict[str, Path]) -> None:
    """The batcher never admits past the slots; an API load while every slot serves running rows is refused."""
    from tuneforge.engine.errors import Overloaded

    adapters = AdapterSet(_base(peaked_model), max_loaded=1, base_template=None)
    for name in ("qk_r2", "all_r4"):
        adapters.register(adapters.validate(name, str(mixed_loras[name])))
    adapters.ensure({"qk_r2"})
    before = _logits_batched(adapters, [PROMPTS[1]], ["qk_r2"])[0]
    adapters.in_use["qk_r2"] += 1  # a running row uses it
    with pytest.raises(Overloaded) as info:
        adapters.ensure({"all_r4"})
    assert info.value.status == 503 and info.value.code == "adapters_busy" and "'all_r4'" in info.value.message
    assert list(adapters.loaded) == ["qk_r2"] and adapters.evictions == 0
    assert torch.equal(_logits_batched(adapters, [PROMPTS[1]], ["qk_r2"])[0], before)
    adapters.in_use["qk_r2"] -= 1  # the row finished: now it is evicted for the other
    adapters.ensure({"all_r4"})
    assert list(adapters.loaded) == ["all_r4"] and adapters.evictions == 1
