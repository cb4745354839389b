"""Serving throughput: output tokens/s at 1, 4 and 16 concurrent requests, per engine.

An engine takes a list of concurrent requests (chat prompts) and returns how many tokens it generated for each.
Every request asks for exactly ``new_tokens`` tokens (random weights would otherwise stop at a random end of
sequence), greedy. Per concurrency level: one short untimed warm-up batch, then ``rounds`` timed ones;
output tokens/s = tokens generated / wall time (synchronised).

Engines:

- ``transformers``: plain ``model.generate`` on a left-padded batch (static batching, KV cache, SDPA), bf16 on
  the GPU; the baseline any serving engine must beat;
- ``tuneforge``: tuneforge's own serving engine, **not in this tree yet** (another change builds it). Plug it
  in at :func:`tuneforge_engine`: return an object with ``generate(prompts, new_tokens) -> list[int]`` and
  ``close()``; until then the run records it as skipped with the reason.

vLLM's CUDA build is not measured: its wheels (with their CUDA kernels) are several hundred MB, far over the
64 MiB the GPU machine can be sent.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any, Protocol

from bench.gpu.models import model_dir
from bench.gpu.plan import Plan
from bench.trainer_bench_common import load_gsm8k_chat


class EngineUnavailable(Exception):
    """The engine cannot run here; the message says why (recorded as the result's reason)."""


class Engine(Protocol):
    def generate(self, prompts: list[list[dict[str, str]]], new_tokens: int) -> list[int]: ...

    def close(self) -> None: ...


class TransformersEngine:
    """``model.generate`` on one left-padded batch of all concurrent requests."""

    def __init__(self, path: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cuda = torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.cuda else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(self.device).eval()

    def generate(self, prompts: list[list[dict[str, str]]], new_tokens: int) -> list[int]:
        import torch

        texts = [self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(
                **batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        if self.cuda:
            torch.cuda.synchronize()
        generated = out[:, batch["input_ids"].shape[1]:]
        return [int(row.numel()) for row in generated]

    def close(self) -> None:
        del self.model
        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.empty_cache()


def transformers_engine(path: Path) -> Engine:
    return TransformersEngine(path)


def tuneforge_engine(path: Path) -> Engine:
    """tuneforge's own serving engine, for the same measurement: the place to plug it in.

    Build it for the model directory ``path`` (config, safetensors, tokenizer files) and return an object with
    ``generate(prompts, new_tokens) -> list[int]`` (all requests submitted concurrently, as its server would
    receive them; one count of generated tokens per request, exactly ``new_tokens`` each) and ``close()``.
    """
    raise EngineUnavailable(
        "tuneforge's serving engine is not in this tree yet: plug it in at bench/gpu/serving.py:tuneforge_engine"
    )


#: engine name -> factory(model directory) -> Engine
ENGINES = {"transformers": transformers_engine, "tuneforge": tuneforge_engine}


def _prompts(n: int, data_dir: Path) -> list[list[dict[str, str]]]:
    return [[m for m in row["messages"] if m["role"] == "user"] for row in load_gsm8k_chat(n, data_dir)]


def measure_level(engine: Engine, prompts: list[list[dict[str, str]]], concurrency: int, new_tokens: int,
                  rounds: int) -> dict[str, Any]:
    engine.generate(prompts[:concurrency], min(8, new_tokens))  # warm-up at this batch size (kernels, allocator)
    tokens, seconds = 0, 0.0
    for r in range(rounds):
        batch = prompts[(r * concurrency) % len(prompts):][:concurrency]
        batch += prompts[: concurrency - len(batch)]
        start = time.perf_counter()
        counts = engine.generate(batch, new_tokens)
        seconds += time.perf_counter() - start
        tokens += sum(counts)
    return {
        "concurrency": concurrency,
        "new_tokens": new_tokens,
        "rounds": rounds,
        "output_tokens": tokens,
        "seconds": round(seconds, 4),
        "output_tokens_per_second": round(tokens / seconds, 1) if seconds else None,
        "seconds_per_batch": round(seconds / rounds, 4),
    }


def run_serving_unit(args: dict[str, Any], plan: Plan, emit: Any, skip: Any, *, data_dir: Path, work: Path,
                     **_: Path) -> None:
    prompts = _prompts(max(plan.concurrency) * plan.serving_rounds, data_dir)
    for model in plan.serving_models:
        for engine_name in plan.serving_engines:
            names = [f"{model}-{engine_name}-c{c}" for c in plan.concurrency]
            try:
                engine = ENGINES[engine_name](model_dir(work, model))
            except EngineUnavailable as exc:
                for name in names:
                    skip(name, str(exc), model=model, engine=engine_name)
                continue
            try:
                for name, c in zip(names, plan.concurrency, strict=True):
                    emit(name, lambda c=c, m=model, e=engine_name, eng=engine: {
                        "model": m, "engine": e,
                        **measure_level(eng, prompts, c, plan.new_tokens, plan.serving_rounds)})
            finally:
                engine.close()
