"""Causal self-attention and its interchangeable implementations ("backends").

Every backend takes q: (batch, n_heads, q_len, head_dim), k and v: (batch, n_kv_heads, kv_len, head_dim)
with n_heads a multiple of n_kv_heads (grouped-query attention), and returns (batch, n_heads, q_len,
head_dim). Without `mask`, queries are the LAST q_len positions of the kv_len keys, attending causally
and, optionally, only to the last `sliding_window` positions. With `mask` (bool, broadcastable to
(batch, 1, q_len, kv_len), True = attend; see `position_mask`) the caller says which keys each query sees:
a KV cache whose rows hold sequences of different lengths. With the mask the caller also passes `positions`,
the queries' positions ((q_len,) or (batch, q_len)) it was built from: a backend may use those instead (the
decode kernel does: no mask to build or read).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm import kernels
from scratchlm.model.config import ModelConfig
from scratchlm.model.layers import (
    Linear,
    RMSNorm,
    compute_dtype,
    few_rows_kernels,
    inference_rows,
    one_row_kernels,
    softmax,
)
from scratchlm.model.rope import RotaryEmbedding

AttentionFn = Callable[..., Tensor]  # (q, k, v, sliding_window=None, mask=None, positions=None) -> out


class LayerCache(Protocol):
    """One layer's key/value store (see scratchlm.inference.kv_cache): `update` stores and returns the k/v of
    kv_len slots; `in_place` hands out the tensors for a kernel that stores into them (None: use `update`),
    `stored` the batch rows' k/v after such a store."""

    def update(self, k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]: ...

    def in_place(self) -> tuple[Tensor, Tensor] | None: ...

    def stored(self, batch: int) -> tuple[Tensor, Tensor]: ...


def causal_mask(q_len: int, kv_len: int, sliding_window: int | None = None, device: torch.device | None = None) -> Tensor:
    """(q_len, kv_len) bool, True where query i (at position kv_len - q_len + i) may attend to key j."""
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    allowed = k_pos <= q_pos
    if sliding_window is not None:
        allowed &= q_pos - k_pos < sliding_window
    return allowed


def position_mask(q_positions: Tensor, kv_len: int, sliding_window: int | None = None) -> Tensor:
    """(batch or 1, 1, q_len, kv_len) bool: key slot j holds position j, and a query at position p sees
    j <= p (and p - j < sliding_window). q_positions: (q_len,) or (batch, q_len)."""
    q_pos = q_positions.reshape(-1, 1, q_positions.shape[-1], 1)  # (batch or 1, 1, q_len, 1)
    k_pos = torch.arange(kv_len, device=q_positions.device)
    allowed = k_pos <= q_pos
    if sliding_window is not None:
        allowed &= q_pos - k_pos < sliding_window
    return allowed


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d), masked) v. q: (..., q_len, d), k/v: (..., kv_len, d), mask: bool broadcastable
    to (..., q_len, kv_len), True = attend. Scores and softmax in float32 (or wider)."""
    wide = compute_dtype(q.dtype)
    scores = (q.to(wide) @ k.to(wide).transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return softmax(scores, dim=-1).to(v.dtype) @ v


def naive_attention(q: Tensor, k: Tensor, v: Tensor, sliding_window: int | None = None,
                    mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
    """Ours, any device. GQA without copying k/v: the query heads of one group share a broadcast k/v head."""
    b, n_heads, q_len, hd = q.shape
    n_kv, kv_len = k.shape[1], k.shape[2]
    if mask is None:
        mask = causal_mask(q_len, kv_len, sliding_window, q.device)
    else:
        mask = mask.unsqueeze(2)  # (batch, 1, 1, q_len, kv_len): broadcast over kv heads and their groups
    q = q.view(b, n_kv, n_heads // n_kv, q_len, hd)
    out = scaled_dot_product_attention(q, k.unsqueeze(2), v.unsqueeze(2), mask)
    return out.reshape(b, n_heads, q_len, hd)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, sliding_window: int | None = None,
                   mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
    """PyTorch's fused attention: the baseline to beat, and the fastest option on GPU until `flash` lands."""
    gqa = q.shape[1] != k.shape[1]
    if mask is None and sliding_window is None and q.shape[2] == k.shape[2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if mask is None:  # is_causal aligns top-left: spell the end-aligned mask out
        mask = causal_mask(q.shape[2], k.shape[2], sliding_window, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


ATTENTION_BACKENDS: dict[str, AttentionFn] = {"naive": naive_attention, "sdpa": sdpa_attention}
# Backends that live in optional modules, imported on first use (Triton is only there with a GPU stack).
LAZY_BACKENDS = {"flash": "scratchlm.kernels.flash_attention"}


# scratchlm.kernels.rope_store.rope_store once an attention layer found it (CUDA with Triton): RoPE and the cache
# store of several decode rows in one kernel
_rope_store: Callable[..., Tensor] | None = None


def _load_rope_store() -> None:
    """Called as attention layers are built (an import inside a torch.compile'd forward would break its graph)."""
    global _rope_store
    if _rope_store is None and (module := kernels.gpu_module("rope_store")) is not None:
        _rope_store = module.rope_store


# Lazy backends whose import failed, with the reason (tried once per process).
_UNAVAILABLE: dict[str, str] = {}


def _load_lazy(name: str) -> bool:
    """Import the module of a lazy backend (it registers itself in ATTENTION_BACKENDS); False if it cannot be."""
    if name not in ATTENTION_BACKENDS and name not in _UNAVAILABLE:
        try:
            importlib.import_module(LAZY_BACKENDS[name])
        except ImportError as e:
            _UNAVAILABLE[name] = str(e)
    return name in ATTENTION_BACKENDS


def get_attention(name: str, device_type: str) -> AttentionFn:
    """The backend `name` for tensors on `device_type`; "auto" picks the fastest available there: flash on CUDA
    when Triton imports (it hands the cases its kernels skip to sdpa), else sdpa on CUDA, naive elsewhere."""
    if name == "auto":
        if device_type != "cuda":
            name = "naive"
        else:
            name = "flash" if _load_lazy("flash") else "sdpa"
    if name in LAZY_BACKENDS and not _load_lazy(name):
        raise ValueError(f"attention backend {name!r} is not available ({_UNAVAILABLE[name]}); use 'naive' or 'sdpa'")
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose from {sorted(ATTENTION_BACKENDS) + ['auto']}")
    return ATTENTION_BACKENDS[name]


class CausalSelfAttention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention with RoPE and optional QK-norm.

    q, k and v come from one fused projection: rows [0, H*hd) are q, then K*hd rows of k, then K*hd of v.
    """

    def __init__(self, config: ModelConfig, rope: RotaryEmbedding, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.sliding_window, self.backend = config.sliding_window, config.attention
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        std = math.sqrt(2.0 / (config.d_model + q_dim))  # as separate q, k, v matrices
        self.qkv_proj = Linear(config.d_model, q_dim + 2 * kv_dim, std=std, row_splits=(q_dim, kv_dim, kv_dim),
                               device=device, dtype=dtype)
        self.o_proj = Linear(q_dim, config.d_model, device=device, dtype=dtype)
        norm = dict(device=device, dtype=dtype, backend=config.norm_backend)
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps, **norm) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps, **norm) if config.qk_norm else None
        self.rope = rope
        if torch.cuda.is_available():  # import a Triton backend now: an import inside a compiled forward breaks the graph
            get_attention(self.backend, "cuda")
        _load_rope_store()

    def forward(self, x: Tensor, positions: Tensor, cache: LayerCache | None = None, norm: RMSNorm | None = None,
                residual: Tensor | None = None, rope_tables: tuple[Tensor, Tensor] | None = None,
                mask: Tensor | None = None) -> Tensor:
        """x: (batch, seq, d_model) -> same: residual + attention of norm(x) (norm and residual optional: given
        here, one-row decoding fuses them into the projections). With `cache`, this call's k/v are stored at
        `positions` and the queries attend to everything the cache holds for their row up to their own position.
        rope_tables (`RotaryEmbedding.tables` at `positions`) and, with a cache, mask (`position_mask` of
        `positions` over the cache's kv_len) are computed here unless the model passes the ones it computed
        once for all layers."""
        b, t, _ = x.shape
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        q = None if cache is None else self._project_into_cache(x, positions, cache, norm)
        if q is not None:  # kernels rotated this step's q and k and stored its keys and values
            k, v = cache.stored(b)
        else:
            q, k, v = self.qkv_proj(x, norm=norm).split((q_dim, kv_dim, kv_dim), dim=-1)
            q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (b, H, t, hd)
            k = k.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (b, K, t, hd)
            v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            if rope_tables is None:
                rope_tables = self.rope.tables(positions, compute_dtype(q.dtype))
            q, k = self.rope.rotate(q, rope_tables), self.rope.rotate(k, rope_tables)
            if cache is not None:
                k, v = cache.update(k, v, positions)  # (b, K, kv_len, hd)
        attention = get_attention(self.backend, x.device.type)
        if cache is None:
            out = attention(q, k, v, self.sliding_window)
        else:
            if mask is None:
                mask = position_mask(positions, k.shape[2], self.sliding_window)
            out = attention(q, k, v, self.sliding_window, mask, positions)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, q_dim), residual=residual)

    def projects_into_cache(self, x: Tensor, positions: Tensor, cache: LayerCache | None) -> bool:
        """Whether `forward` rotates this input's q and k and stores its k and v in the cache by a kernel: one
        decode row that the one-row GEMV takes (scratchlm.kernels.gemv.gemv_qkv: the projection too), 2-16 rows
        that its several-row kernel takes (gemv_rows_qkv: likewise, the norm before it a kernel of its own), or
        rows on CUDA under no_grad (scratchlm.kernels.rope_store, after the projection's GEMM); all need a cache
        that lets a kernel store into it and no QK-norm (it needs whole heads before the rotation)."""
        return self._cache_projection(x, positions, cache) is not None

    def _cache_projection(self, x: Tensor, positions: Tensor,
                          cache: LayerCache | None) -> tuple[str, Callable[..., Tensor], tuple[Tensor, Tensor]] | None:
        """("gemv_qkv", "gemv_rows_qkv" or "rope_store", that kernel, the cache's k and v tensors) where
        `projects_into_cache`, else None."""
        stores = None if cache is None or self.q_norm is not None else cache.in_place()
        if stores is None or stores[0].dtype != x.dtype:
            return None
        if positions.numel() == 1 and (one_row := one_row_kernels(x, self.qkv_proj.weight)) is not None:
            return "gemv_qkv", one_row.gemv_qkv, stores
        few = few_rows_kernels(x, self.qkv_proj.weight)
        if few is not None and few.gemv_rows_qkv is not None and self.head_dim % 16 == 0:
            return "gemv_rows_qkv", few.gemv_rows_qkv, stores
        if _rope_store is not None and inference_rows(x, under_compile=True) and self.head_dim & (self.head_dim - 1) == 0:
            return "rope_store", _rope_store, stores
        return None

    def _project_into_cache(self, x: Tensor, positions: Tensor, cache: LayerCache,
                            norm: RMSNorm | None) -> Tensor | None:
        """q (b, H, t, hd), its k and v already rotated and stored in the cache, by the kernels of
        `projects_into_cache`; None elsewhere."""
        found = self._cache_projection(x, positions, cache)
        if found is None:
            return None
        name, kernel, stores = found
        if name == "rope_store":
            return kernel(self.qkv_proj(x, norm=norm), self.rope.cos, self.rope.sin, positions.long(), *stores,
                          self.n_heads)
        if name == "gemv_rows_qkv":
            return kernel(x if norm is None else norm(x), self.qkv_proj.weight, self.rope.cos, self.rope.sin,
                          positions.long(), *stores, self.n_heads)
        q = kernel(x, self.qkv_proj.weight, None if norm is None else norm.weight, 1e-5 if norm is None else norm.eps,
                   self.rope.cos, self.rope.sin, positions.reshape(1).long(), *stores, self.n_heads)
        return q.view(1, 1, self.n_heads, self.head_dim).transpose(1, 2)
