"""Batched LoRA: every loaded adapter's weights stacked per layer, one pass for a batch that mixes them.

PEFT's mixed batch (``adapter_names``) loops, in each LoRA layer, over the distinct adapters of the batch and
gathers, multiplies and scatters each one's rows: thousands of tiny operations per step, which cost far more
than their arithmetic on busy CPU cores. Here the base model's targeted ``nn.Linear`` layers are wrapped once
(:class:`LoraLinear`); each holds the A and B matrices of every loaded adapter in one tensor with a slot per
adapter (slot 0 is "no adapter" and stays zero). Ranks are padded to the largest loaded rank with zeros, a layer
an adapter does not target keeps that adapter's slot zero, and each adapter's scale (``alpha/r``, or
``alpha/sqrt(r)`` with rsLoRA) is folded into its B. Dropout does not exist at inference.

Before each forward pass :meth:`LoraStack.select` tells every layer which slot each row uses, once for all
layers; a layer then adds its rows' LoRA products in one of two ways (``kernel``):

- ``segments`` (default): the rows are ordered by slot once per pass; a layer multiplies each slot's
  contiguous run of rows by that slot's own (unpadded) A and B and adds the result in place: two matmuls and
  one add per distinct adapter in the batch, no weight copies;
- ``bmm``: each row's A and B are gathered by slot index and applied with ``torch.bmm`` for the whole batch
  at once (the S-LoRA/Punica shape): a fixed number of operations per layer, but every row copies its
  adapter's matrices.

Loading and unloading write slots between two steps on the generation thread (see :mod:`.adapters`), so a
forward pass never sees a slot change.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

KERNELS = ("segments", "bmm")

#: LoRA config fields whose non-default values change what a layer computes beyond x @ A @ B * scale
_UNSUPPORTED = {
    "use_dora": "DoRA", "lora_bias": "a LoRA bias", "modules_to_save": "modules saved in full (modules_to_save)",
    "trainable_token_indices": "trainable tokens", "layer_replication": "layer replication",
    "alora_invocation_tokens": "aLoRA", "target_parameters": "LoRA on parameters (target_parameters)",
    "use_qalora": "QALoRA", "velora_config": "VeLoRA", "monteclora_config": "MonteCLoRA",
}


def unsupported_feature(config: dict[str, Any]) -> str | None:
    """What in a PEFT LoRA config the batched layers cannot compute, or None."""
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            return what
    if config.get("bias", "none") not in (None, "none"):
        return f"trained biases (bias={config['bias']!r})"
    return None


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    # PEFT's rule (peft.utils.other.get_pattern_key): the first key that matches a suffix of the module path
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


@dataclass
class AdapterWeights:
    """One adapter's LoRA pairs by module path: A as (in, r), B as (r, out) with the scale folded in."""

    rank: int
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]


def read_adapter(path: Path, weights_file: str, modules: dict[str, nn.Module]) -> AdapterWeights:
    """Read a PEFT LoRA adapter for the batched layers; ValueError says what does not fit."""
    from safetensors.torch import load_file

    config = json.loads((path / "adapter_config.json").read_text())
    feature = unsupported_feature(config)
    if feature is not None:
        raise ValueError(f"it uses {feature}, which this engine cannot batch with other adapters")
    tensors = load_file(str(path / weights_file))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        # base_model.model.<module path>.lora_A.weight (PEFT strips the adapter name when saving)
        match = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight", key)
        if match is None:
            raise ValueError(f"tensor {key} is not a LoRA A or B weight of a linear layer")
        module, kind = match.groups()
        layer = modules.get(module)
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"tensor {key}: the base model has no linear layer {module}")
        pairs.setdefault(module, {})[kind] = tensor
    r_default, alpha_default = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise ValueError(f"module {module} has lora_{''.join(pair)} without its other half")
        a, b = pair["A"], pair["B"]
        r = int(_pattern_value(rank_pattern, module, r_default))
        if a.shape[0] != r or b.shape[1] != r:
            raise ValueError(f"module {module}: rank {a.shape[0]} in the weights, {r} in adapter_config.json")
        alpha = float(_pattern_value(alpha_pattern, module, alpha_default))
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        base = modules[module]
        assert isinstance(base, nn.Linear)
        dtype, device = base.weight.dtype, base.weight.device
        layers[module] = (a.t().to(device=device, dtype=dtype).contiguous(),
                          (b.t().float() * scale).to(device=device, dtype=dtype).contiguous())
    if not layers:
        raise ValueError("it has no LoRA weights")
    return AdapterWeights(max(a.shape[1] for a, _ in layers.values()), layers)


@dataclass
class Selection:
    """Which slot each row of the current forward pass uses; shared by every layer, set once per pass."""

    kernel: str
    slots: torch.Tensor | None = None  # (batch,) long, for ``bmm``
    order: torch.Tensor | None = None  # rows sorted by slot, None when they already are (``segments``)
    runs: list[tuple[int, int, int]] = field(default_factory=list)  # (slot, start, end) in sorted order

    @property
    def active(self) -> bool:
        return bool(self.runs)


class LoraLinear(nn.Module):
    """A base ``nn.Linear`` plus the stacked LoRA pairs of every slot."""

    def __init__(self, base: nn.Linear, slots: int, rank: int, selection: Selection) -> None:
        super().__init__()
        self.base = base
        self.selection = selection
        w = base.weight
        # buffers, not parameters: never trained, and out of state_dict() so the model's keys do not change
        self.register_buffer("lora_a", w.new_zeros((slots, base.in_features, rank)), persistent=False)
        self.register_buffer("lora_b", w.new_zeros((slots, rank, base.out_features)), persistent=False)
        self.ranks = [0] * slots  # 0: this slot adds nothing in this layer

    lora_a: torch.Tensor
    lora_b: torch.Tensor

    def grow(self, rank: int) -> None:
        slots, in_f, old = self.lora_a.shape
        if rank <= old:
            return
        a = self.lora_a.new_zeros((slots, in_f, rank))
        b = self.lora_b.new_zeros((slots, rank, self.lora_b.shape[2]))
        a[:, :, :old] = self.lora_a
        b[:, :old, :] = self.lora_b
        self.lora_a, self.lora_b = a, b

    def write(self, slot: int, pair: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        self.ranks[slot] = 0
        if pair is not None:
            a, b = pair
            r = a.shape[1]
            self.lora_a[slot, :, :r] = a
            self.lora_b[slot, :r, :] = b
            self.ranks[slot] = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        sel = self.selection
        if not sel.active:
            return out
        if sel.kernel == "bmm":
            assert sel.slots is not None
            # (batch, tokens, in) @ (batch, in, R) @ (batch, R, out): every row with its own slot's pair
            flat = x.reshape(x.shape[0], -1, x.shape[-1])
            h = torch.bmm(flat, self.lora_a.index_select(0, sel.slots))
            delta = torch.bmm(h, self.lora_b.index_select(0, sel.slots))
            return out.add_(delta.view(out.shape))
        xs = x if sel.order is None else x.index_select(0, sel.order)
        for slot, start, end in sel.runs:
            r = self.ranks[slot]
            if r == 0:
                continue
            delta = (xs[start:end] @ self.lora_a[slot, :, :r]) @ self.lora_b[slot, :r, :]
            if sel.order is None:
                out[start:end] += delta
            else:
                out.index_add_(0, sel.order[start:end], delta)
        return out


class LoraStack:
    """The batched LoRA layers of one base model: slots for up to ``max_loaded`` adapters."""

    def __init__(self, model: nn.Module, max_loaded: int, kernel: str = "segments") -> None:
        if kernel not in KERNELS:
            raise ValueError(f"unknown LoRA kernel {kernel!r}; expected one of {', '.join(KERNELS)}")
        self.model = model
        self.slots = max_loaded + 1
        self.selection = Selection(kernel)
        self.rank = 0  # the stacks' padded rank: the largest rank loaded so far
        self.layers: dict[str, LoraLinear] = {}
        self.slot_of: dict[str, int] = {}
        self.modules = {name: mod for name, mod in model.named_modules() if name}

    def load(self, name: str, path: Path, weights_file: str) -> None:
        if name in self.slot_of:
            return
        free = [s for s in range(1, self.slots) if s not in self.slot_of.values()]
        if not free:
            raise RuntimeError(f"no free LoRA slot for {name!r}: unload one first")
        weights = read_adapter(path, weights_file, self.modules)  # everything checked before the model changes
        if weights.rank > self.rank:
            self.rank = weights.rank
            for layer in self.layers.values():
                layer.grow(self.rank)
        slot = free[0]
        for module, pair in weights.layers.items():
            self._layer(module).write(slot, pair)
        self.slot_of[name] = slot

    def unload(self, name: str) -> None:
        slot = self.slot_of.pop(name)
        for layer in self.layers.values():
            if layer.ranks[slot]:
                layer.write(slot, None)

    def _layer(self, module: str) -> LoraLinear:
        layer = self.layers.get(module)
        if layer is None:
            base = self.modules[module]
            assert isinstance(base, nn.Linear)
            layer = LoraLinear(base, self.slots, self.rank, self.selection)
            parent_name, _, child = module.rpartition(".")
            setattr(self.model.get_submodule(parent_name) if parent_name else self.model, child, layer)
            self.layers[module] = layer
        return layer

    def select(self, names: list[str | None]) -> None:
        """Point every layer at the rows' slots for the next forward pass (None: the base model)."""
        sel = self.selection
        slots = [self.slot_of[n] if n is not None else 0 for n in names]
        sel.runs, sel.order, sel.slots = [], None, None
        if not any(slots):
            return
        if sel.kernel == "bmm":
            device = next(iter(self.layers.values())).lora_a.device
            sel.slots = torch.tensor(slots, dtype=torch.long, device=device)
            sel.runs = [(0, 0, len(slots))]  # marks the pass active
            return
        order = sorted(range(len(slots)), key=slots.__getitem__)  # stable: rows of one slot keep their order
        if order != list(range(len(slots))):
            device = next(iter(self.layers.values())).lora_a.device
            sel.order = torch.tensor(order, dtype=torch.long, device=device)
        start = 0
        for i in range(1, len(order) + 1):
            if i == len(order) or slots[order[i]] != slots[order[start]]:
                if slots[order[start]]:
                    sel.runs.append((slots[order[start]], start, i))
                start = i

    def clear(self) -> None:
        self.select([])
