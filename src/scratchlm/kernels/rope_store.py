"""RoPE and the KV-cache store of a few decode rows in one Triton kernel.

A decode step of several rows (batched decoding, speculative verification's k + 1 positions) projects q, k and v
with one GEMM, then rotates q and k and writes k and v into the cache. As PyTorch operations that is ~10 kernels
a layer (float32 copies, the rotate-half concatenation, products and sums, two indexed stores) for a few
kilobytes of data; each costs a launch and a few microseconds of a CUDA graph. Here a program per (query row,
head) loads the head's pairs (j, j + D/2) of the projection (`scratchlm.model.rope`'s pairing), rotates them by
the angle of the row's position in float32 (the tables' float64 values rounded to float32, as
`RotaryEmbedding.rotate` computes in a half-precision model), and stores a query head into q or a key head into
the cache, with its value head beside it. One row (batch-1 decoding) has this in its GEMV
(`scratchlm.kernels.gemv.gemv_qkv`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from scratchlm import kernels

INTERPRETED = bool(triton.knobs.runtime.interpret)


@triton.jit
def _rope_store_kernel(QKV, COS, SIN, POS, Q, KC, VC, n_queries, n_heads, n_kv_heads, n_slots, stride_pb, stride_pt,
                       stride_kcb, stride_kch, stride_kcs, stride_vcb, stride_vch, stride_vcs, HALF: tl.constexpr,
                       PDL: tl.constexpr):
    """Program (query row r = b * T + t, head): head < H rotates query head `head` into Q (B x T, H, D); else
    it rotates key head g = head - H into the cache row b at the position, and copies value head g there. A
    position past the cache's n_slots stores nothing (the caller's error; never a write out of the cache)."""
    query = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    row = query // n_queries
    j = tl.arange(0, HALF)
    position = tl.load(POS + row * stride_pb + (query % n_queries) * stride_pt)
    cos = tl.load(COS + position * HALF + j).to(tl.float32)
    sin = tl.load(SIN + position * HALF + j).to(tl.float32)
    if PDL:  # the projection comes from the kernel before
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    width = (n_heads + 2 * n_kv_heads) * 2 * HALF
    x = QKV + query * width + head * 2 * HALF
    x1 = tl.load(x + j).to(tl.float32)
    x2 = tl.load(x + HALF + j).to(tl.float32)
    y1, y2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
    inside = j < 2 * HALF  # every pair, as a mask
    if head < n_heads:
        out = Q + (query * n_heads + head) * 2 * HALF
    else:
        inside = inside & (position < n_slots)
        kv_head = head - n_heads
        out = KC + row * stride_kcb + kv_head * stride_kch + position * stride_kcs
        value = VC + row * stride_vcb + kv_head * stride_vch + position * stride_vcs
        v = x + n_kv_heads * 2 * HALF  # the value head sits KV heads after its key head
        tl.store(value + j, tl.load(v + j), mask=inside)
        tl.store(value + HALF + j, tl.load(v + HALF + j), mask=inside)
    tl.store(out + j, y1.to(out.dtype.element_ty), mask=inside)
    tl.store(out + HALF + j, y2.to(out.dtype.element_ty), mask=inside)


@torch.library.custom_op("scratchlm::rope_store", mutates_args=("k_cache", "v_cache"))
def _rope_store_op(qkv: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, k_cache: Tensor, v_cache: Tensor,
                   n_heads: int) -> Tensor:
    b, t, _ = qkv.shape
    n_kv_heads, head_dim = k_cache.shape[1], k_cache.shape[3]
    q = kernels.heads_per_query(b, n_heads, t, head_dim, qkv.dtype, qkv.device)
    pdl = kernels.pdl_options(qkv)
    _rope_store_kernel[(b * t, n_heads + n_kv_heads)](
        qkv, cos, sin, positions, q, k_cache, v_cache, t, n_heads, n_kv_heads, k_cache.shape[2],
        positions.stride(0) if positions.shape[0] > 1 else 0, positions.stride(1), *k_cache.stride()[:3],
        *v_cache.stride()[:3], HALF=head_dim // 2, PDL=bool(pdl), num_warps=1, **pdl)
    return q


@_rope_store_op.register_fake
def _(qkv: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, k_cache: Tensor, v_cache: Tensor,
      n_heads: int) -> Tensor:
    b, t, _ = qkv.shape
    return kernels.heads_per_query(b, n_heads, t, k_cache.shape[3], qkv.dtype, qkv.device, torch.empty)


def check_operands(b: int, t: int, width: int, dtype: torch.dtype, cos: Tensor, sin: Tensor, positions: Tensor,
                   k_cache: Tensor, v_cache: Tensor, n_heads: int, head_dim_multiple: int = 2) -> Tensor:
    """Raise ValueError unless a projection of B x T rows of `width` = (n_heads + 2 KV) D columns in `dtype` can
    be rotated and stored into these caches at these positions (D a multiple of head_dim_multiple); returns
    positions as (B or 1, T). Shared with `scratchlm.kernels.gemv.gemv_rows_qkv`."""
    n_kv_heads, head_dim = (k_cache.shape[1], k_cache.shape[3]) if k_cache.dim() == 4 else (0, 0)
    positions = positions.view(1, -1) if positions.dim() == 1 else positions
    if (k_cache.dim() != 4 or v_cache.shape != k_cache.shape or head_dim % head_dim_multiple or n_heads < 1
            or width != (n_heads + 2 * n_kv_heads) * head_dim or k_cache.shape[0] < b
            or not dtype == k_cache.dtype == v_cache.dtype or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1):
        raise ValueError(f"the projection of (B, T) = ({b}, {t}) rows, (n_heads + 2 KV) D = {width} wide, needs "
                         f"caches (slots >= B, KV, S, D) of its dtype {dtype}, contiguous in D, D a multiple of "
                         f"{head_dim_multiple}; got caches {tuple(k_cache.shape)} {k_cache.dtype} / "
                         f"{tuple(v_cache.shape)} {v_cache.dtype}, n_heads {n_heads}")
    if positions.dtype != torch.long or positions.dim() != 2 or positions.shape[0] not in (1, b) or positions.shape[1] != t:
        raise ValueError(f"positions must be long (B, T), (1, T) or (T,) for (B, T) = ({b}, {t}), got "
                         f"{positions.dtype} {tuple(positions.shape)}")
    if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[1] != head_dim // 2:
        raise ValueError(f"cos and sin must be (max_len, {head_dim // 2}), got {tuple(cos.shape)}, {tuple(sin.shape)}")
    return positions


def rope_store(qkv: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, k_cache: Tensor, v_cache: Tensor,
               n_heads: int) -> Tensor:
    """qkv (B, T, (H + 2 KV) D): the stacked projection of T queries in each of B rows (H query heads, then KV
    key heads, then KV value heads of D dims); positions (B, T), (1, T) or (T,) long, each < S; cos, sin
    (max_len, D/2) RoPE's tables (angle of position p and pair j at [p, j]); k_cache, v_cache (slots, KV, S, D),
    row b of the batch in slot b. Stores the rotated keys and the values at their positions and returns the
    rotated queries (B, H, T, D) (laid out as (B, T, H, D))."""
    if qkv.dim() != 3:
        raise ValueError(f"rope_store needs qkv (B, T, (n_heads + 2 KV) D), got {tuple(qkv.shape)}")
    positions = check_operands(*qkv.shape, qkv.dtype, cos, sin, positions, k_cache, v_cache, n_heads)
    kernels.check_device(INTERPRETED, qkv, cos, sin, positions, k_cache, v_cache)
    kernels.check_dtype("qkv", qkv.dtype)
    return _rope_store_op(qkv.contiguous(), cos.contiguous(), sin.contiguous(), positions.contiguous(), k_cache,
                          v_cache, n_heads)
