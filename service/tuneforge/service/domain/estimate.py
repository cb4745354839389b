"""Estimate a job before paying for it: tokens, steps, duration on the requested hardware, and cost.

Duration comes from a throughput table: training tokens per second by device and model size. The CPU row is
measured (bench/README.md: SFT, LoRA r=16, SmolLM2-135M-Instruct, 2 CPU cores, 86.7 tokens/s; DPO 58.4
tokens/s, 2026-11-23). No GPU has been measured in this repository yet, so GPU rows are modelled from the
device's dense bf16 peak, 6 x parameters FLOPs per token and a model FLOPs utilisation of 0.3, and say so in
the answer (``throughput_source``); a deployment replaces any row with its own measurement
(``TUNEFORGE_THROUGHPUT_OVERRIDES``). Other model sizes scale inversely with the parameter count (the work per
token is ~6N FLOPs). Cost is device-hours times the price table (``TUNEFORGE_GPU_HOUR_PRICES``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from tuneforge.contracts.catalog import BASE_MODELS
from tuneforge.contracts.jobspec import JobSpec
from tuneforge.contracts.store_layout import base_model_prefix
from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.db.models import File
from tuneforge.service.domain.usage import devices as job_devices
from tuneforge.storage import ObjectStore

#: measured: SFT tokens/s of SmolLM2-135M-Instruct (LoRA r=16) on 2 CPU cores, bench/README.md (2026-11-23)
CPU_SFT_TOKENS_PER_SECOND = 86.7
CPU_MEASURED_PARAMS = 134_515_008
#: measured: DPO / SFT tokens/s on the same machine and model (58.4 / 86.7)
METHOD_FACTOR = {"supervised": 1.0, "dpo": 58.4 / 86.7, "reward_model": 1.0, "reinforcement": 0.25}
METHOD_FACTOR_SOURCE = {"supervised": "measured", "dpo": "measured", "reward_model": "assumed as supervised",
                        "reinforcement": "modelled (generation dominates)"}
#: dense bf16 peak FLOP/s of devices without a measurement here (vendor figures)
PEAK_FLOPS = {
    "NVIDIA-H200": 989e12, "NVIDIA-H100-80GB-HBM3": 989e12, "NVIDIA-H100": 989e12,
    "NVIDIA-A100-SXM4-80GB": 312e12, "NVIDIA-A100-SXM4-40GB": 312e12, "NVIDIA-A100": 312e12,
    "NVIDIA-L40S": 362e12, "NVIDIA-L4": 121e12, "NVIDIA-A10G": 70e12, "default": 312e12,
}
MODELLED_MFU = 0.3


@dataclass(frozen=True)
class Throughput:
    tokens_per_second: float
    source: str


def size_bucket(params: int) -> str:
    """``135M``, ``1.7B``: how the override table names a size."""
    return f"{params / 1e9:.3g}B" if params >= 1e9 else f"{params / 1e6:.3g}M"


def throughput(device: str, params: int, method: str, overrides: dict[str, float]) -> Throughput:
    factor = METHOD_FACTOR.get(method, 1.0)
    for key in (f"{device}/{size_bucket(params)}", device):
        if key in overrides:
            return Throughput(overrides[key] * factor, f"TUNEFORGE_THROUGHPUT_OVERRIDES[{key!r}] x method factor "
                              f"{factor:.2f} ({METHOD_FACTOR_SOURCE.get(method, 'assumed')})")
    if device == "cpu":
        base = CPU_SFT_TOKENS_PER_SECOND * CPU_MEASURED_PARAMS / params
        return Throughput(base * factor, "measured on 2 CPU cores with SmolLM2-135M (bench/README.md, "
                          f"{CPU_SFT_TOKENS_PER_SECOND} tokens/s), scaled by parameters; method factor "
                          f"{factor:.2f} ({METHOD_FACTOR_SOURCE.get(method, 'assumed')})")
    peak = PEAK_FLOPS.get(device, PEAK_FLOPS["default"])
    base = peak * MODELLED_MFU / (6.0 * params)
    return Throughput(base * factor, f"modelled: {peak / 1e12:g} TFLOP/s bf16 peak x MFU {MODELLED_MFU} / 6N "
                      f"(no measurement for {device} yet); method factor {factor:.2f}")


def model_params(store: ObjectStore, base_model: str) -> int:
    """Parameters of a base model: the bundled one is known; a registered one is read from its config and
    weights' size in the store."""
    if base_model in BASE_MODELS:
        return CPU_MEASURED_PARAMS
    prefix = base_model_prefix(base_model)
    try:
        manifest = json.loads(store.get_bytes(f"{prefix}/manifest.json"))
        weights = sum(int(f.get("bytes", 0)) for f in manifest.get("files", [])
                      if str(f.get("name", "")).endswith(".safetensors"))
        config = json.loads(store.get_bytes(f"{prefix}/config.json"))
    except Exception:
        return CPU_MEASURED_PARAMS
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    per_param = 2 if dtype in ("bfloat16", "float16") else 4
    return max(1, weights // per_param)


def steps_of(spec: JobSpec) -> int:
    hp = spec.hyperparameters
    if hp.max_steps and int(hp.max_steps) > 0:
        return int(hp.max_steps)
    per_epoch = math.ceil(max(1, spec.training_file.rows) / (int(hp.batch_size) *
                                                           max(1, int(hp.gradient_accumulation_steps))))
    return per_epoch * int(hp.n_epochs)


def estimate(spec: JobSpec, training: File, store: ObjectStore, settings: ServiceSettings,
             budget: dict[str, Any] | None) -> dict[str, Any]:
    hp = spec.hyperparameters
    steps = steps_of(spec)
    rows = max(1, training.rows)
    tokens_per_row = training.tokens / rows
    examples = steps * int(hp.batch_size) * max(1, int(hp.gradient_accumulation_steps))
    total_tokens = round(tokens_per_row * examples)
    default_device = settings.estimate.default_device or ("cpu" if settings.executor.kind == "local" else "default")
    device = spec.resources.gpu_type or default_device
    n_devices = job_devices(spec.resources.model_dump())
    params = model_params(store, spec.base_model)
    speed = throughput(device, params, spec.method.type, settings.estimate.throughput_overrides)
    seconds = total_tokens / (speed.tokens_per_second * n_devices) if total_tokens else 0.0
    gpu_hours = seconds * n_devices / 3600.0
    prices = settings.estimate.gpu_hour_prices
    price = prices.get(device, prices.get("default", 0.0))
    out: dict[str, Any] = {
        "object": "fine_tuning.job.estimate",
        "model": spec.base_model,
        "method": spec.method.type,
        "training_file": training.id,
        "rows": training.rows,
        "tokens_per_epoch": training.tokens,
        "steps": steps,
        "examples": examples,
        "total_tokens": total_tokens,
        "parameters": params,
        "device": device,
        "devices": n_devices,
        "tokens_per_second": round(speed.tokens_per_second * n_devices, 2),
        "throughput_source": speed.source,
        "estimated_seconds": round(seconds, 1),
        "gpu_hours": round(gpu_hours, 6),
        "cost": {"amount": round(gpu_hours * price, 4), "currency": settings.estimate.price_currency,
                 "price_per_gpu_hour": price},
    }
    if budget is not None:
        out["budget"] = budget
    return out
