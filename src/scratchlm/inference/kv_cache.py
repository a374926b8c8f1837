"""A static, preallocated key/value cache: one slot per sequence, slot index = token position.

Rows may hold sequences of different lengths: each row writes its new keys/values at its own positions,
and attention masks keys by position (`position_mask`), so batching prompts of different lengths needs no
padding-aware kernels. Shapes never change after allocation (what CUDA graphs and torch.compile want).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from scratchlm.model.config import ModelConfig


@dataclass
class LayerKV:
    k: Tensor  # (batch, n_kv_heads, max_len, head_dim)
    v: Tensor

    def update(self, k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (batch, n_kv_heads, t, head_dim) at positions (t,) or (batch, t); return the whole
        cache of these rows (batch, n_kv_heads, max_len, head_dim)."""
        b, _, t, _ = k.shape
        pos = positions.expand(b, t)
        rows = torch.arange(b, device=k.device)[:, None]  # (b, 1)
        self.k[rows, :, pos] = k.transpose(1, 2).to(self.k.dtype)  # indexed view: (b, t, n_kv_heads, head_dim)
        self.v[rows, :, pos] = v.transpose(1, 2).to(self.v.dtype)
        return self.k[:b], self.v[:b]


class KVCache:
    def __init__(self, config: ModelConfig, batch_size: int, max_len: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        self.max_len = max_len or config.context_length
        if self.max_len > config.context_length:
            raise ValueError(f"max_len {self.max_len} exceeds the model's context_length {config.context_length}")
        shape = (config.n_layers, batch_size, config.kv_heads, self.max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def layer(self, index: int) -> LayerKV:
        return LayerKV(self.k[index], self.v[index])

    def slot(self, index: int) -> SlotView:
        """Row `index` alone, as a batch-1 cache (prefilling one sequence into its slot)."""
        return SlotView(self, index)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


class SlotView:
    """One row of a KVCache with the KVCache interface: writes land in the shared tensors."""

    def __init__(self, cache: KVCache, index: int):
        self.cache, self.index = cache, index

    def layer(self, index: int) -> LayerKV:
        row = slice(self.index, self.index + 1)
        return LayerKV(self.cache.k[index, row], self.cache.v[index, row])
