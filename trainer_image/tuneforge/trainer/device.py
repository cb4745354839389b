"""Device and precision choices: bf16 on capable GPUs, fp16 on older ones, fp32 on CPU."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

#: dense bf16/fp16 peak FLOP/s per GPU, for MFU (tensor cores, no sparsity)
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "H800": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "T4": 65e12,
    "V100": 125e12,
}


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" or "cpu"
    name: str
    bf16: bool
    fp16: bool
    peak_flops: float | None

    @property
    def cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def torch_dtype(self) -> Any:
        import torch

        if self.bf16:
            return torch.bfloat16
        if self.fp16:
            return torch.float16
        return torch.float32


def detect_device() -> DeviceInfo:
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        bf16 = bool(torch.cuda.is_bf16_supported())
        peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        return DeviceInfo("cuda", name, bf16=bf16, fp16=not bf16, peak_flops=peak)
    return DeviceInfo("cpu", "cpu", bf16=False, fp16=False, peak_flops=None)


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def peak_memory_bytes() -> int | None:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return None
