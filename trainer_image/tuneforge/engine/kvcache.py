"""The running batch's KV cache: one left-padded tensor per layer that rows join and leave between steps.

transformers' ``DynamicLayer`` concatenates every step, copying the whole cache of every layer once per token.
:class:`GrowableLayer` keeps keys and values in a buffer with ``growth`` free positions at the end and writes
each step's keys in place; ``.keys``/``.values`` are views of the filled part (what attention reads). With
``growth=0`` it behaves like ``DynamicLayer`` (bench/serving.py measures both with ``--kv-growth``).

Rows are left-padded to a common length; the attention mask hides the padding. A joining group (prefilled on
its own) and the running batch are padded on the left to the longer of the two and stacked; rows that finish
are dropped with an index select, and columns that only padding uses any more are trimmed off the left.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class GrowableLayer(DynamicLayer):
    def __init__(self, growth: int) -> None:
        super().__init__()
        self.growth = growth
        self.kbuf: torch.Tensor | None = None
        self.vbuf: torch.Tensor | None = None
        self.length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        need = self.length + key_states.shape[-2]
        if self.kbuf is None or self.vbuf is None or need > self.kbuf.shape[-2]:
            self._reserve(key_states, value_states, need + self.growth)
        assert self.kbuf is not None and self.vbuf is not None
        self.kbuf[:, :, self.length : need] = key_states
        self.vbuf[:, :, self.length : need] = value_states
        self.length = need
        return self._views()

    def _reserve(self, like_k: torch.Tensor, like_v: torch.Tensor, capacity: int) -> None:
        b, h, _, d = like_k.shape
        kbuf = like_k.new_zeros((b, h, capacity, d))
        vbuf = like_v.new_zeros((b, h, capacity, like_v.shape[-1]))
        if self.kbuf is not None and self.vbuf is not None and self.length:
            kbuf[:, :, : self.length] = self.kbuf[:, :, : self.length]
            vbuf[:, :, : self.length] = self.vbuf[:, :, : self.length]
        self.kbuf, self.vbuf = kbuf, vbuf

    def _views(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.kbuf is not None and self.vbuf is not None
        keys, values = self.kbuf[:, :, : self.length], self.vbuf[:, :, : self.length]
        self.keys, self.values = keys, values
        return keys, values

    def set(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Replace the content (already padded) and keep ``growth`` free positions after it."""
        self.is_initialized = True
        self.dtype, self.device = keys.dtype, keys.device
        self.kbuf = self.vbuf = None
        self.length = 0
        self._reserve(keys, values, keys.shape[-2] + self.growth)
        assert self.kbuf is not None and self.vbuf is not None
        self.kbuf[:, :, : keys.shape[-2]] = keys
        self.vbuf[:, :, : values.shape[-2]] = values
        self.length = keys.shape[-2]
        self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.kbuf is None or self.vbuf is None:
            return
        self.kbuf = self.kbuf[indices]
        self.vbuf = self.vbuf[indices]
        self._views()

    def trim_left(self, columns: int) -> None:
        if columns <= 0 or self.kbuf is None or self.vbuf is None:
            return
        # views of the same storage: no copy, the free space at the end is kept
        self.kbuf = self.kbuf[:, :, columns:]
        self.vbuf = self.vbuf[:, :, columns:]
        self.length -= columns
        self._views()


def new_cache(model_config: Any, growth: int) -> DynamicCache:
    cache = DynamicCache(config=model_config)
    kinds = {type(layer).__name__ for layer in cache.layers}
    if kinds - {"DynamicLayer"}:
        raise ValueError(f"this engine batches full-attention models only; the model has {sorted(kinds)} layers")
    cache.layers = [GrowableLayer(growth) for _ in cache.layers]
    return cache


def _pad_left(t: torch.Tensor, length: int) -> torch.Tensor:
    """(B, H, L, D) -> (B, H, length, D), zeros on the left."""
    extra = length - t.shape[-2]
    if extra == 0:
        return t
    pad = t.new_zeros((t.shape[0], t.shape[1], extra, t.shape[3]))
    return torch.cat([pad, t], dim=-2)


def merge(running: DynamicCache, running_mask: torch.Tensor, joining: DynamicCache,
          joining_mask: torch.Tensor) -> torch.Tensor:
    """Stack ``joining``'s rows under ``running``'s (``running`` is updated in place); returns the new mask."""
    length = max(running_mask.shape[1], joining_mask.shape[1])
    for mine, theirs in zip(running.layers, joining.layers, strict=True):
        assert isinstance(mine, GrowableLayer) and isinstance(theirs, GrowableLayer)
        mk, mv = mine._views()
        tk, tv = theirs._views()
        keys = torch.cat([_pad_left(mk, length), _pad_left(tk, length)], dim=0)
        values = torch.cat([_pad_left(mv, length), _pad_left(tv, length)], dim=0)
        mine.set(keys, values)
    return torch.cat([_pad_mask(running_mask, length), _pad_mask(joining_mask, length)], dim=0)


def _pad_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    extra = length - mask.shape[1]
    if extra == 0:
        return mask
    return torch.cat([mask.new_zeros((mask.shape[0], extra)), mask], dim=1)


def select(cache: DynamicCache, mask: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """Keep rows ``keep`` (in that order; repeats allowed) and trim padding-only columns; returns the mask."""
    index = torch.tensor(keep, dtype=torch.long, device=mask.device)
    mask = mask[index]
    for layer in cache.layers:
        assert isinstance(layer, GrowableLayer)
        layer.batch_select_indices(index)
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else mask.shape[1]
    if start:
        mask = mask[:, start:]
        for layer in cache.layers:
            assert isinstance(layer, GrowableLayer)
            layer.trim_left(start)
    return mask
