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
    k: Tensor  # (slots, n_kv_heads, max_len, head_dim): one layer's whole tensor, never a view of a bigger one
    v: Tensor
    rows: Tensor | None = None  # (batch,) slot indices of the batch rows; None: the first `batch` slots
    length: int | None = None  # positions to hand back (all max_len when None)

    def update(self, k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (batch, n_kv_heads, t, head_dim) at positions (t,) or (batch, t) of their rows; return
        these rows' cache (batch, n_kv_heads, length, head_dim).

        The write indexes the layer's own tensor in place. (Writing through a view of a larger tensor made
        torch.compile copy the whole larger tensor back after every step.)"""
        b, _, t, _ = k.shape
        pos = positions.expand(b, t)
        rows = torch.arange(b, device=k.device) if self.rows is None else self.rows
        self.k[rows[:, None], :, pos] = k.transpose(1, 2).to(self.k.dtype)  # indexed view: (b, t, n_kv_heads, head_dim)
        self.v[rows[:, None], :, pos] = v.transpose(1, 2).to(self.v.dtype)
        if self.rows is None:
            return self.stored(b)
        return self.k[self.rows, :, :self.length], self.v[self.rows, :, :self.length]  # gathered copies (prefill)

    def in_place(self) -> tuple[Tensor, Tensor] | None:
        """The layer's whole k and v tensors when the batch rows are the leading slots (decoding: a kernel may
        write a step's keys and values into them itself, then read them back with `stored`), else None."""
        return (self.k, self.v) if self.rows is None else None

    def stored(self, batch: int) -> tuple[Tensor, Tensor]:
        """The first `batch` slots' cache, a view (decoding reads the cache in place); rows must be None."""
        return self.k[:batch, :, :self.length], self.v[:batch, :, :self.length]


class KVCache:
    def __init__(self, config: ModelConfig, batch_size: int, max_len: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        self.max_len = max_len or config.context_length
        if self.max_len > config.context_length:
            raise ValueError(f"max_len {self.max_len} exceeds the model's context_length {config.context_length}")
        shape = (batch_size, config.kv_heads, self.max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]  # per layer
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]

    @property
    def kv_len(self) -> int:
        return self.max_len

    def layer(self, index: int) -> LayerKV:
        return LayerKV(self.k[index], self.v[index])

    def rows(self, slots: Tensor, length: int) -> RowsView:
        """Slots `slots` (batch,) as one batch whose queries sit below position `length` (prefilling prompts
        into their slots): writes land in the shared tensors, attention reads positions [0, length)."""
        return RowsView(self, slots, length)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v)


class RowsView:
    """Some slots of a KVCache, with the KVCache interface (see `KVCache.rows`)."""

    def __init__(self, cache: KVCache, slots: Tensor, length: int):
        self.cache, self.slots, self.length = cache, slots, length

    @property
    def kv_len(self) -> int:
        return self.length

    def layer(self, index: int) -> LayerKV:
        return LayerKV(self.cache.k[index], self.cache.v[index], self.slots, self.length)
