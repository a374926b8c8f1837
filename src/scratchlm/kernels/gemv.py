"""y = x W^T for a single row x, in Triton: the matrix-vector products of batch-1 decoding.

A batch-1 decode step is one row through every weight matrix, so its time is reading the weights. cuBLAS
runs a single row as a narrow GEMM (tiles of 64 output columns on an H100: a 2048 x 6144 matrix gets 96
programs for 132 SMs) and reached about a quarter of the copy bandwidth on GPT-2-small's matrices
(docs/inference.md). Here every program owns a few (BLOCK_N = 2 or 4) output columns (thousands of small
programs keep the most loads in flight) and streams its rows of W (contiguous: W is (N, K) row-major) in
BLOCK_K chunks against the row x, accumulating in float32. Which tiles: see TILE_RULES.

Fused around the product, because a one-row decode step is a chain of tiny kernels whose launch-to-finish
latency, not bandwidth, is most of their time: RMSNorm before it (every program recomputes the row's rstd:
K values from L2), SwiGLU's silu(gate) * up before the down projection, the residual add after it. The model
passes these to `scratchlm.model.layers.linear`, which runs them here for one half-precision row on CUDA under
no_grad (batch-1 decoding) and as separate operations everywhere else. On by default; `enabled(False)` is the
A/B (benchmarks/gemv.py for the kernel alone, benchmarks/inference.py's "-gemv" modes for decoding): on an
H100 it read the 15 decode matrices of the three GPT presets 1.12-1.76x faster than cuBLAS, and batch-1
decoding of gpt2-small went from 1,635 to 2,171 tokens/s compiled. `gemv_qkv` is the same kernel for
attention's q/k/v projection with RoPE and the KV-cache store as its epilogue (programs own rotation pairs),
which saves the decode step's RoPE and cache-write kernels (H100, batch-1 graph-mode decoding, gpt2-small
1,271 -> 3,122 tokens/s, gpt-1.3b 415 -> 667).

A few rows (2-16: a speculative verification pass, a small decode batch) take `gemv_rows`: W streamed by
column blocks as above, the rows' products on tensor cores (`_rows_kernel`; on CUDA cores the products, not
the bytes, bound a several-row GEMV from ~4 rows), 1.0-1.36x cuBLAS on the decode matrices (H100,
benchmarks/gemv.py); with SwiGLU's gate, or (`gemv_rows_qkv`) RoPE and the cache store, as epilogues.

On Hopper the kernels are launched with programmatic dependent launch (`kernels.pdl_options`): each program
reads its first chunk of weights, which nothing before it writes, then waits for the previous kernel
(`gdc_wait`) and lets the next one start (`gdc_launch_dependents`); in a chain of GEMVs each one's weight
reads overlap the previous one's tail (H100, batch-1 decode, gpt2-small: 2,708 -> 2,997 tokens/s).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from scratchlm import kernels
from scratchlm.kernels import rope_store

INTERPRETED = bool(triton.knobs.runtime.interpret)

MAX_BLOCK_K = 2048  # see `config`
DTYPES = (torch.float16, torch.bfloat16)  # where a row is worth a kernel of its own (float32: tests only)
MAX_ROWS = 16  # rows of x the several-row kernel takes: its tensor-core tile pads them to 16 (`_rows_kernel`)

_enabled = True  # see the module docstring


@contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Use (True) or bypass (False) the kernel in Linear within the block; CUDA graphs and compiled code made
    inside keep the choice."""
    global _enabled
    previous, _enabled = _enabled, on
    try:
        yield
    finally:
        _enabled = previous


def applies(x: Tensor, weight: Tensor) -> bool:
    """`linear`'s test: one row, a half-precision CUDA tensor, no autograd, the kernel on."""
    return _half_cuda_inference(x, weight) and x.numel() == x.shape[-1]


def applies_rows(x: Tensor, weight: Tensor) -> bool:
    """`linear`'s test for the several-row kernel: 2 to MAX_ROWS rows, otherwise as `applies`."""
    return _half_cuda_inference(x, weight) and 1 < n_rows(x) <= MAX_ROWS


def n_rows(x: Tensor) -> int:
    """Rows of x (..., K)."""
    return x.numel() // max(x.shape[-1], 1)


def _half_cuda_inference(x: Tensor, weight: Tensor) -> bool:
    return (_enabled and x.is_cuda and x.dtype in DTYPES and weight.dtype == x.dtype
            and not torch.is_grad_enabled())


@triton.jit
def _inputs(X, G, offs_k, K, NORM: tl.constexpr, GATED: tl.constexpr):
    """One chunk of the row: x (gate when GATED), up (GATED; else x again) and the norm weight (NORM; else x)."""
    ok = offs_k < K
    x = tl.load(X + offs_k, mask=ok, other=0.0)
    up = x
    g = x
    if GATED:
        up = tl.load(X + K + offs_k, mask=ok, other=0.0)
    if NORM:
        g = tl.load(G + offs_k, mask=ok, other=0.0)
    return x, up, g


@triton.jit
def _chunk_product(x, up, g, w, rstd, NORM: tl.constexpr, GATED: tl.constexpr):
    """sum over one chunk of columns of w (BLOCK_N, BLOCK_K) * the prepared input row -> (BLOCK_N,) float32."""
    dtype = x.dtype
    x = x.to(tl.float32)
    if GATED:  # the input is silu(gate) * up, rounded as the unfused model rounds it
        x = (x * tl.sigmoid(x) * up.to(tl.float32)).to(dtype).to(tl.float32)
    if NORM:  # x * rstd * g, rounded to the activation dtype like RMSNorm's output
        x = (x * rstd * g.to(tl.float32)).to(dtype).to(tl.float32)
    return tl.sum(w.to(tl.float32) * x[None, :], axis=1)


@triton.jit
def _gemv_kernel(X, W, Y, G, R, N, K, stride_wn, eps, COS, SIN, POS, KC, VC, stride_kch, stride_kcs, stride_vch,
                 stride_vcs, n_heads, n_kv_heads, NORM: tl.constexpr, GATED: tl.constexpr,
                 RESIDUAL: tl.constexpr, ROPE: tl.constexpr, HALF: tl.constexpr, PDL: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """ROPE: W is attention's stacked q, k, v projection (heads of 2 * HALF rows) and each program owns
    BLOCK_N / 2 consecutive rotation pairs (j, j + HALF) of one head, interleaved: rows j, j + HALF, j + 1,
    j + 1 + HALF... (see `_store_rotated`); else BLOCK_N consecutive rows.
    A program is a chain of memory latencies more than a stream of bytes (a few KB of weights each): what
    does not depend on the kernel before (the first chunk of weights, of the norm weight) is loaded before
    waiting for it, and the row and residual are loaded together right after, each once."""
    if ROPE:
        first_pair = tl.program_id(0) * (BLOCK_N // 2)
        head = first_pair // HALF
        j = first_pair % HALF + tl.arange(0, BLOCK_N) // 2  # (BLOCK_N,): each pair's j, twice
        offs_n = head * (2 * HALF) + j + (tl.arange(0, BLOCK_N) % 2) * HALF
    else:
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = offs_n < N
    w_rows = W + offs_n.to(tl.int64)[:, None] * stride_wn
    offs_k = tl.arange(0, BLOCK_K)
    w_first = tl.load(w_rows + offs_k[None, :], mask=row_ok[:, None] & (offs_k < K)[None, :], other=0.0)
    if NORM:
        g_first = tl.load(G + offs_k, mask=offs_k < K, other=0.0)
    if PDL:
        tl.extra.cuda.gdc_wait()  # the previous kernel's writes (x, the residual) are visible from here
        tl.extra.cuda.gdc_launch_dependents()  # and the next kernel may start reading its own weights
    x_first, up_first, _ = _inputs(X, G, offs_k, K, False, GATED)
    if ROPE:  # the rotation's angles, loaded now (two dependent loads) to overlap the product
        position = tl.load(POS)
        pair_j = first_pair % HALF + tl.arange(0, BLOCK_N // 2)
        cos = tl.load(COS + position * HALF + pair_j).to(tl.float32)
        sin = tl.load(SIN + position * HALF + pair_j).to(tl.float32)
    if RESIDUAL:
        residual = tl.load(R + offs_n, mask=row_ok, other=0.0)
    rstd = 0.0
    if NORM:  # every program computes the row's rstd itself: K values, from L2, instead of a kernel of its own
        squares = x_first.to(tl.float32) * x_first.to(tl.float32)
        for start in range(BLOCK_K, K, BLOCK_K):
            offs_k = start + tl.arange(0, BLOCK_K)
            x = tl.load(X + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
            squares += x * x
        rstd = tl.rsqrt(tl.sum(squares, axis=0) / K + eps)
    else:
        g_first = x_first
    acc = _chunk_product(x_first, up_first, g_first, w_first, rstd, NORM, GATED)
    for start in range(BLOCK_K, K, BLOCK_K):
        offs_k = start + tl.arange(0, BLOCK_K)
        w = tl.load(w_rows + offs_k[None, :], mask=row_ok[:, None] & (offs_k < K)[None, :], other=0.0)
        x, up, g = _inputs(X, G, offs_k, K, NORM, GATED)
        acc += _chunk_product(x, up, g, w, rstd, NORM, GATED)
    if ROPE:
        _store_rotated(acc.to(Y.dtype.element_ty).to(tl.float32), head, j, position, cos, sin, Y, KC, VC,
                       stride_kch, stride_kcs, stride_vch, stride_vcs, n_heads, n_kv_heads, HALF, BLOCK_N)
    else:
        if RESIDUAL:  # residual + (x W^T rounded), as the unfused model adds two tensors of the activation dtype
            acc = acc.to(Y.dtype.element_ty).to(tl.float32) + residual.to(tl.float32)
        tl.store(Y + offs_n, acc.to(Y.dtype.element_ty), mask=row_ok)


@triton.jit
def _store_rotated(y, head, j, position, cos, sin, Y, KC, VC, stride_kch, stride_kcs, stride_vch, stride_vcs,
                   n_heads, n_kv_heads, HALF: tl.constexpr, BLOCK_N: tl.constexpr):
    """y (BLOCK_N,): the program's rotation pairs of head `head` of the stacked projection, interleaved (rows
    j, j + HALF of each pair; j (BLOCK_N,) each pair's j twice), rounded to the activation dtype. Query and key
    pairs are rotated by RoPE's angle at the row's position (cos, sin (BLOCK_N / 2,): float32 of the tables'
    values, as `RotaryEmbedding.rotate` computes); queries go to Y, keys and values to the cache there."""
    dims = j + (tl.arange(0, BLOCK_N) % 2) * HALF  # (BLOCK_N,) within the head
    if head < n_heads + n_kv_heads:
        y1, y2 = tl.split(tl.reshape(y, (BLOCK_N // 2, 2)))
        y = tl.reshape(tl.join(y1 * cos - y2 * sin, y2 * cos + y1 * sin), (BLOCK_N,))
    if head < n_heads:
        tl.store(Y + head * 2 * HALF + dims, y.to(Y.dtype.element_ty))
    elif head < n_heads + n_kv_heads:
        tl.store(KC + (head - n_heads) * stride_kch + position * stride_kcs + dims, y.to(KC.dtype.element_ty))
    else:
        tl.store(VC + (head - n_heads - n_kv_heads) * stride_vch + position * stride_vcs + dims,
                 y.to(VC.dtype.element_ty))


@triton.jit
def _rows_kernel(X, W, Y, M, N, K, stride_xm, stride_wn, stride_ym, COS, SIN, POS, KC, VC, n_queries, stride_pb,
                 stride_pt, stride_kcb, stride_kch, stride_kcs, stride_vcb, stride_vch, stride_vcs, n_heads,
                 n_kv_heads, n_slots, GATE: tl.constexpr, ROPE: tl.constexpr, HALF: tl.constexpr,
                 PDL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Y (M, N) = X W^T for M <= BLOCK_M rows: a program owns BLOCK_N rows of W (output columns) and multiplies
    its (BLOCK_N, BLOCK_K) chunks of W by the rows' (BLOCK_K, BLOCK_M) chunk on tensor cores (W on the left, so
    the few rows pad a dimension of 16, not of 64). As in `_gemv_kernel`, the first chunk of W is read before
    waiting for the kernel before. Norms, gates of the input and residuals stay outside: transforming the rows'
    chunk between its load and the product took it off the asynchronous pipeline and made the kernel up to 2x
    slower; the output side is free:
      GATE: W is SwiGLU's [gate; up] (N = 2F) and Y (M, F) gets silu(gate) * up, each program owning
        BLOCK_N / 2 hidden units j, rows j and F + j of W interleaved;
      ROPE: W is attention's stacked q, k, v projection and each program owns BLOCK_N / 2 rotation pairs of one
        head, interleaved as in `_gemv_kernel` (`_store_rotated_rows` rotates and stores them)."""
    if GATE:
        f = N // 2
        j = tl.program_id(0) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N) // 2  # each hidden unit twice
        offs_n = j + (tl.arange(0, BLOCK_N) % 2) * f
        n_ok = j < f
    elif ROPE:
        first_pair = tl.program_id(0) * (BLOCK_N // 2)
        head = first_pair // HALF
        offs_n = head * (2 * HALF) + first_pair % HALF + tl.arange(0, BLOCK_N) // 2 + (tl.arange(0, BLOCK_N) % 2) * HALF
        n_ok = offs_n < N
    else:
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
    offs_m = tl.arange(0, BLOCK_M)
    w_rows = W + offs_n.to(tl.int64)[:, None] * stride_wn
    x_rows = X + offs_m[None, :] * stride_xm
    offs_k = tl.arange(0, BLOCK_K)
    w_first = tl.load(w_rows + offs_k[None, :], mask=n_ok[:, None] & (offs_k < K)[None, :], other=0.0)
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    x_first = tl.load(x_rows + offs_k[:, None], mask=(offs_k < K)[:, None] & (offs_m < M)[None, :], other=0.0)
    acc = tl.dot(w_first, x_first, tl.zeros((BLOCK_N, BLOCK_M), tl.float32), input_precision="ieee")
    for start in range(BLOCK_K, K, BLOCK_K):
        offs_k = start + tl.arange(0, BLOCK_K)
        w = tl.load(w_rows + offs_k[None, :], mask=n_ok[:, None] & (offs_k < K)[None, :], other=0.0)
        x = tl.load(x_rows + offs_k[:, None], mask=(offs_k < K)[:, None] & (offs_m < M)[None, :], other=0.0)
        acc = tl.dot(w, x, acc, input_precision="ieee")  # (BLOCK_N, BLOCK_M)
    y = acc.to(Y.dtype.element_ty)
    if GATE:  # the product rounded as the unfused model's tensor, then silu(gate) * up in float32 (kernels.swiglu)
        offs_j = tl.program_id(0) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        gate, up = tl.split(tl.reshape(tl.trans(y.to(tl.float32)), (BLOCK_M, BLOCK_N // 2, 2)))
        tl.store(Y + offs_m[:, None] * stride_ym + offs_j[None, :], (gate * tl.sigmoid(gate) * up).to(y.dtype),
                 mask=(offs_m < M)[:, None] & (offs_j < f)[None, :])
    elif ROPE:
        _store_rotated_rows(tl.trans(y.to(tl.float32)), head, first_pair % HALF + tl.arange(0, BLOCK_N // 2),
                            offs_m, M, COS, SIN, POS, Y, KC, VC, n_queries, stride_pb, stride_pt, stride_kcb,
                            stride_kch, stride_kcs, stride_vcb, stride_vch, stride_vcs, n_heads, n_kv_heads, n_slots,
                            HALF, BLOCK_M, BLOCK_N)
    else:
        tl.store(Y + offs_m[None, :] * stride_ym + offs_n[:, None], y, mask=n_ok[:, None] & (offs_m < M)[None, :])


@triton.jit
def _store_rotated_rows(y, head, j, offs_m, M, COS, SIN, POS, Q, KC, VC, n_queries, stride_pb, stride_pt, stride_kcb,
                        stride_kch, stride_kcs, stride_vcb, stride_vch, stride_vcs, n_heads, n_kv_heads, n_slots,
                        HALF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """`_store_rotated` for rows m = b * T + t (T = n_queries): y (BLOCK_M, BLOCK_N) the rounded projection of
    the program's pairs j (BLOCK_N / 2,) of head `head`, interleaved; each row rotated at its own position
    (POS (B or 1, T)) and stored as `scratchlm.kernels.rope_store` does: queries into Q (B x T, H, D), keys and
    values into cache row b at the position (none past n_slots)."""
    row = offs_m // n_queries
    m_ok = offs_m < M
    position = tl.load(POS + row * stride_pb + (offs_m % n_queries) * stride_pt, mask=m_ok, other=0)  # (BLOCK_M,)
    y1, y2 = tl.split(tl.reshape(y, (BLOCK_M, BLOCK_N // 2, 2)))  # dims j and j + HALF of each pair
    if head < n_heads + n_kv_heads:
        angle = position[:, None] * HALF + j[None, :]
        cos = tl.load(COS + angle, mask=m_ok[:, None], other=0.0).to(tl.float32)
        sin = tl.load(SIN + angle, mask=m_ok[:, None], other=0.0).to(tl.float32)
        y1, y2 = y1 * cos - y2 * sin, y2 * cos + y1 * sin
    ok = m_ok[:, None]
    if head < n_heads:
        out = Q + (offs_m[:, None].to(tl.int64) * n_heads + head) * (2 * HALF) + j[None, :]
    elif head < n_heads + n_kv_heads:
        ok = ok & (position < n_slots)[:, None]
        out = (KC + row[:, None].to(tl.int64) * stride_kcb + (head - n_heads) * stride_kch
               + position[:, None] * stride_kcs + j[None, :])
    else:
        ok = ok & (position < n_slots)[:, None]
        out = (VC + row[:, None].to(tl.int64) * stride_vcb + (head - n_heads - n_kv_heads) * stride_vch
               + position[:, None] * stride_vcs + j[None, :])
    tl.store(out, y1.to(out.dtype.element_ty), mask=ok)
    tl.store(out + HALF, y2.to(out.dtype.element_ty), mask=ok)

Tiles = tuple[int, int, int, int]  # (BLOCK_N, BLOCK_K, num_warps, num_stages)


def _two_rows(k: int) -> Tiles:
    """Two rows a program: many small programs keep the most loads in flight (alone, in the H100 sweep of
    benchmarks/gemv.py, BLOCK_N 1-32, tiles of 2k-16k elements, 2-8 warps, 1 or 3 stages, BLOCK_N = 2 was the
    fastest on 14 of the 15 decode matrices of the three GPT presets); K in chunks of up to 2048 columns, 8
    warps for chunks that long."""
    block_k = min(MAX_BLOCK_K, triton.next_power_of_2(k))
    return 2, block_k, 8 if block_k >= 2048 else 4, 3


def _four_rows(k: int) -> Tiles:
    """Four rows a program in chunks of up to 1024 columns (4 warps), or of 2048 (8 warps) past K = 2048."""
    return (4, 2048, 8, 3) if k > 2048 else (4, min(1024, triton.next_power_of_2(k)), 4, 3)


def _four_rows_wide(k: int) -> Tiles:
    """Four rows a program, chunks as `_two_rows`."""
    return (4, *_two_rows(k)[1:])


def _four_rows_down(k: int) -> Tiles:
    """Four rows a program past K = 2048 (SwiGLU's down projection), else two."""
    return _four_rows(k) if k > 2048 else _two_rows(k)


# In a decode step the GEMVs run back to back, each overlapping the one before (programmatic dependent launch),
# and the best tiles are not those of a matrix alone: in CUDA-graph chains of a whole H100 decode step, four
# rows a program were 11% faster than two at gpt-1.3b and 8% at gpt2-small but 8% slower at gpt-350m, with no
# rule of N and K fitting all three. So a model's shapes get the rule that `scratchlm.inference.tuning` found
# fastest for its decode step (`use_tile_rule`); others the default.
TILE_RULES = {"two-rows": _two_rows, "four-rows": _four_rows, "four-rows-wide": _four_rows_wide,
              "four-rows-down": _four_rows_down}
DEFAULT_TILE_RULE = "two-rows"
_shape_rules: dict[tuple[int, int], str] = {}  # (N, K) -> rule name


def use_tile_rule(rule: str, shapes: Iterable[tuple[int, int]]) -> None:
    """Weights of these (N, K) shapes get tiles from TILE_RULES[rule] in every launch from now on (CUDA graphs
    and compiled steps keep the tiles they were made with)."""
    if rule not in TILE_RULES:
        raise ValueError(f"unknown tile rule {rule!r}; one of {sorted(TILE_RULES)}")
    _shape_rules.update(dict.fromkeys(shapes, rule))


def config(n: int, k: int) -> Tiles:
    """The tiles of an N x K weight: its shape's rule (`use_tile_rule`), else the default rule."""
    return TILE_RULES[_shape_rules.get((n, k), DEFAULT_TILE_RULE)](k)


def rows_config(n: int, k: int) -> Tiles:
    """The several-row kernel's tiles: 64 output columns a program, chunks of 128 columns, 4 warps; 4 pipeline
    stages where N >= 2K (q/k/v, gate/up, the LM head), else 6. Within 8% of the fastest for 5 rows on each decode
    matrix of gpt-1.3b in an H100 sweep (BLOCK_N 16-64, BLOCK_K 128-512, 4-8 warps, 3-6 stages, split K 1-8)."""
    block_k = max(16, min(128, triton.next_power_of_2(k)))
    return (64, block_k, 4, 4 if n >= 2 * k else 6)


@dataclass(frozen=True)
class RopeStore:
    """What the ROPE epilogue needs (`gemv_qkv`, `gemv_rows_qkv`): RoPE's cos and sin tables (max_len, D/2), the
    positions (one row: (1,) long, its caches' slot 0; several rows (B, T) or (1, T) long, row b in slot b), the
    layer's key and value caches (slots, KV, S, D), and H."""

    cos: Tensor
    sin: Tensor
    position: Tensor
    k_cache: Tensor
    v_cache: Tensor
    n_heads: int


def launch(x: Tensor, weight: Tensor, norm_weight: Tensor | None = None, eps: float = 1e-5,
           residual: Tensor | None = None, gated: bool = False,
           tiles: Tiles | None = None, rope: RopeStore | None = None) -> Tensor:
    """The kernel on checked, contiguous inputs. tiles: (BLOCK_N, BLOCK_K, num_warps, num_stages), default
    `config(N, K)` (benchmarks/gemv.py sweeps the alternatives); with `rope` the output is q only (H x D)."""
    n, k = weight.shape
    block_n, block_k, num_warps, num_stages = tiles or config(n, k)
    pdl = kernels.pdl_options(x)
    if rope is None:
        y = kernels.output_buffer((*x.shape[:-1], n), x.dtype, x.device)
        cos = sin = position = k_cache = v_cache = x  # not read
        cache_strides, n_heads, n_kv_heads, half = (0, 0, 0, 0), 0, 0, 1
    else:
        cos, sin, position, k_cache, v_cache = rope.cos, rope.sin, rope.position, rope.k_cache, rope.v_cache
        half, n_heads, n_kv_heads = k_cache.shape[-1] // 2, rope.n_heads, k_cache.shape[1]
        y = kernels.output_buffer((*x.shape[:-1], n_heads * 2 * half), x.dtype, x.device)
        cache_strides = (k_cache.stride(1), k_cache.stride(2), v_cache.stride(1), v_cache.stride(2))
        block_n = 2 * math.gcd(max(block_n // 2, 1), half)  # whole rotation pairs of one head a program
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight, y, x if norm_weight is None else norm_weight, x if residual is None else residual, n, k,
        weight.stride(0), eps, cos, sin, position, k_cache, v_cache, *cache_strides, n_heads, n_kv_heads,
        NORM=norm_weight is not None, GATED=gated, RESIDUAL=residual is not None, ROPE=rope is not None,
        HALF=half, PDL=bool(pdl), BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages,
        **pdl)
    return y


def launch_rows(x: Tensor, weight: Tensor, gate: bool = False, rope: RopeStore | None = None,
                tiles: Tiles | None = None) -> Tensor:
    """The several-row kernel on checked, contiguous inputs; tiles as `launch`, default `rows_config(N, K)`.
    With `rope` (its position (B or 1, T) and caches (slots >= B, KV, S, D)), x is (B, T, K) and the output q
    (B, H, T, D) laid out as (B, T, H, D)."""
    n, k = weight.shape
    block_n, block_k, num_warps, num_stages = tiles or rows_config(n, k)
    pdl = kernels.pdl_options(x)
    rows = n_rows(x)
    if rope is None:
        width = n // 2 if gate else n  # output columns
        y = kernels.output_buffer((*x.shape[:-1], width), x.dtype, x.device)
        programs = triton.cdiv(width, block_n // 2 if gate else block_n)
        cos = sin = positions = k_cache = v_cache = x  # not read
        pos_strides, cache_strides, n_queries, n_heads, n_kv_heads, half = (0, 0), (0,) * 6, 1, 0, 0, 1
    else:
        cos, sin, positions, k_cache, v_cache = rope.cos, rope.sin, rope.position, rope.k_cache, rope.v_cache
        b, t = x.shape[0], x.shape[1]
        half, n_heads, n_kv_heads = k_cache.shape[-1] // 2, rope.n_heads, k_cache.shape[1]
        y = kernels.heads_per_query(b, n_heads, t, 2 * half, x.dtype, x.device)
        pos_strides = (positions.stride(0) if positions.shape[0] > 1 else 0, positions.stride(1))
        cache_strides = (*k_cache.stride()[:3], *v_cache.stride()[:3])
        n_queries, width = t, n
        block_n = 2 * math.gcd(block_n // 2, half)  # whole rotation pairs of one head a program
        programs = n // block_n
    _rows_kernel[(programs,)](
        x, weight, y, rows, n, k, k, weight.stride(0), width, cos, sin, positions, k_cache, v_cache, n_queries,
        *pos_strides, *cache_strides, n_heads, n_kv_heads, k_cache.shape[2] if rope else 0, GATE=gate,
        ROPE=rope is not None, HALF=half, PDL=bool(pdl), BLOCK_M=MAX_ROWS, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps, num_stages=num_stages, **pdl)
    return y


@torch.library.custom_op("scratchlm::gemv", mutates_args=())
def _gemv_op(x: Tensor, weight: Tensor, norm_weight: Tensor | None, eps: float, residual: Tensor | None,
             gated: bool) -> Tensor:
    return launch(x, weight, norm_weight, eps, residual, gated)


@_gemv_op.register_fake
def _(x: Tensor, weight: Tensor, norm_weight: Tensor | None, eps: float, residual: Tensor | None,
      gated: bool) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("scratchlm::gemv_rows", mutates_args=())
def _gemv_rows_op(x: Tensor, weight: Tensor, gate: bool) -> Tensor:
    return launch_rows(x, weight, gate)


@_gemv_rows_op.register_fake
def _(x: Tensor, weight: Tensor, gate: bool) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0] // 2 if gate else weight.shape[0]))


@torch.library.custom_op("scratchlm::gemv_rows_qkv", mutates_args=("k_cache", "v_cache"))
def _gemv_rows_qkv_op(x: Tensor, weight: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, k_cache: Tensor,
                      v_cache: Tensor, n_heads: int) -> Tensor:
    return launch_rows(x, weight, rope=RopeStore(cos, sin, positions, k_cache, v_cache, n_heads))


@_gemv_rows_qkv_op.register_fake
def _(x: Tensor, weight: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, k_cache: Tensor, v_cache: Tensor,
      n_heads: int) -> Tensor:
    return kernels.heads_per_query(x.shape[0], n_heads, x.shape[1], k_cache.shape[-1], x.dtype, x.device, torch.empty)


@torch.library.custom_op("scratchlm::gemv_qkv", mutates_args=("k_cache", "v_cache"))
def _gemv_qkv_op(x: Tensor, weight: Tensor, norm_weight: Tensor | None, eps: float, cos: Tensor, sin: Tensor,
                 position: Tensor, k_cache: Tensor, v_cache: Tensor, n_heads: int) -> Tensor:
    return launch(x, weight, norm_weight, eps, rope=RopeStore(cos, sin, position, k_cache, v_cache, n_heads))


@_gemv_qkv_op.register_fake
def _(x: Tensor, weight: Tensor, norm_weight: Tensor | None, eps: float, cos: Tensor, sin: Tensor,
      position: Tensor, k_cache: Tensor, v_cache: Tensor, n_heads: int) -> Tensor:
    return x.new_empty((*x.shape[:-1], n_heads * k_cache.shape[-1]))


def _check_operands(x: Tensor, weight: Tensor, norm_weight: Tensor | None, residual: Tensor | None,
                    gated: bool, max_rows: int = 1) -> None:
    kernels.check_device(INTERPRETED, *(t for t in (x, weight, norm_weight, residual) if t is not None))
    kernels.check_dtype("gemv inputs", x.dtype)
    n, k = weight.shape if weight.dim() == 2 else (-1, -1)
    if (weight.dtype != x.dtype or k < 0 or x.shape[-1] != k * (2 if gated else 1) or not 0 < n_rows(x) <= max_rows):
        raise ValueError(f"gemv needs {'one row' if max_rows == 1 else f'1 to {max_rows} rows'} x "
                         f"(..., {'2K' if gated else 'K'}) and weight (N, K) of its dtype, got x {tuple(x.shape)} "
                         f"{x.dtype}, weight {tuple(weight.shape)} {weight.dtype}")
    if norm_weight is not None and (gated or norm_weight.shape != (k,)):
        raise ValueError(f"norm_weight must be ({k},) and not combined with gated, got {tuple(norm_weight.shape)}")
    if residual is not None and (residual.shape != (*x.shape[:-1], n) or residual.dtype != x.dtype):
        raise ValueError(f"residual must be {(*x.shape[:-1], n)} {x.dtype}, got {tuple(residual.shape)} "
                         f"{residual.dtype}")


def _contiguous_rows(weight: Tensor) -> Tensor:
    return weight if weight.stride(1) == 1 else weight.contiguous()


def gemv(x: Tensor, weight: Tensor, norm_weight: Tensor | None = None, eps: float = 1e-5,
         residual: Tensor | None = None, gated: bool = False) -> Tensor:
    """x (..., K) holding one row, weight (N, K) -> x @ weight.T (..., N), in x's dtype; forward only.
    Fused around the product (what a decode step does next to each matrix, saved a kernel each):
      norm_weight (K,): RMSNorm first, x * rsqrt(mean(x^2) + eps) * norm_weight;
      gated: x is (..., 2K) = [gate, up] and the input is silu(gate) * up (SwiGLU's down projection);
      residual (..., N): added to the product."""
    _check_operands(x, weight, norm_weight, residual, gated)
    return _gemv_op(x.contiguous(), _contiguous_rows(weight), None if norm_weight is None else norm_weight.contiguous(),
                    eps, None if residual is None else residual.contiguous(), gated)


def gemv_rows(x: Tensor, weight: Tensor, gate: bool = False) -> Tensor:
    """x (..., K) holding 1 to MAX_ROWS rows, weight (N, K) -> x @ weight.T (..., N), in x's dtype, on tensor
    cores (`_rows_kernel`); forward only. gate: the product is SwiGLU's [gate, up] (N even) and the result
    silu(gate) * up (..., N / 2). What `scratchlm.model.layers.linear` runs for a speculative verification pass
    or a small decode batch (norms and residual adds there are kernels of their own)."""
    _check_operands(x, weight, None, None, False, max_rows=MAX_ROWS)
    if gate and weight.shape[0] % 2:
        raise ValueError(f"gate needs an even number of weight rows ([gate; up]), got {weight.shape[0]}")
    return _gemv_rows_op(x.contiguous(), _contiguous_rows(weight), gate)


def gemv_rows_qkv(x: Tensor, weight: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, k_cache: Tensor,
                  v_cache: Tensor, n_heads: int) -> Tensor:
    """`gemv_qkv` for up to MAX_ROWS rows, without the norm (several rows have their own norm kernel): x (B, T, K),
    the q/k/v projection on tensor cores with `scratchlm.kernels.rope_store`'s work as its epilogue (q and k
    rotated at each row's position, k and v stored into cache row b). positions (B, T), (1, T) or (T,) long,
    each < S; cos, sin (max_len, D/2); caches (slots >= B, KV, S, D). Returns q (B, H, T, D) laid out as
    (B, T, H, D)."""
    _check_operands(x, weight, None, None, False, max_rows=MAX_ROWS)
    if x.dim() != 3:
        raise ValueError(f"gemv_rows_qkv needs x (B, T, K), got {tuple(x.shape)}")
    positions = rope_store.check_operands(x.shape[0], x.shape[1], weight.shape[0], x.dtype, cos, sin, positions,
                                          k_cache, v_cache, n_heads, head_dim_multiple=16)
    kernels.check_device(INTERPRETED, x, cos, sin, positions, k_cache, v_cache)
    return _gemv_rows_qkv_op(x.contiguous(), _contiguous_rows(weight), cos.contiguous(), sin.contiguous(),
                             positions.contiguous(), k_cache, v_cache, n_heads)


def gemv_qkv(x: Tensor, weight: Tensor, norm_weight: Tensor | None, eps: float, cos: Tensor, sin: Tensor,
             position: Tensor, k_cache: Tensor, v_cache: Tensor, n_heads: int) -> Tensor:
    """Attention's input side for one decode row in one kernel: [q, k, v] = norm(x) @ weight.T (weight stacks H
    query heads, then KV key heads and KV value heads of D rows), q and k rotated by RoPE at `position` (tables
    cos, sin: (max_len, D/2), angle of position p and pair j at [p, j]; pairs are dimensions (j, j + D/2)), k
    and v written into slot 0 of the caches (slots, KV, S, D) at that position. Returns q (..., H x D).
    norm_weight: RMSNorm first, as in `gemv` (None: no norm). Saves the separate RoPE and cache-write kernels
    of a decode step (scratchlm.model.attention uses it when `linear` would run `gemv` on the projection)."""
    _check_operands(x, weight, norm_weight, None, False)
    _, n_kv_heads, _, head_dim = k_cache.shape if k_cache.dim() == 4 else (0, 0, 0, 0)
    if (k_cache.dim() != 4 or v_cache.shape != k_cache.shape or k_cache.dtype != x.dtype or v_cache.dtype != x.dtype or head_dim % 2
            or n_heads < 1 or weight.shape[0] != (n_heads + 2 * n_kv_heads) * head_dim
            or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1):
        raise ValueError(f"gemv_qkv needs k and v caches (slots, KV, S, D) of x's dtype, contiguous in D, D even, and "
                         f"weight ((n_heads + 2 KV) D, K); got caches {tuple(k_cache.shape)} {k_cache.dtype} / "
                         f"{tuple(v_cache.shape)} {v_cache.dtype}, weight {tuple(weight.shape)}, n_heads {n_heads}")
    if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[1] != head_dim // 2:
        raise ValueError(f"cos and sin must be (max_len, {head_dim // 2}), got {tuple(cos.shape)}, {tuple(sin.shape)}")
    if position.dtype != torch.long or position.numel() != 1:
        raise ValueError(f"position must hold one long, got {position.dtype} {tuple(position.shape)}")
    kernels.check_device(INTERPRETED, x, cos, sin, position, k_cache, v_cache)
    return _gemv_qkv_op(x.contiguous(), _contiguous_rows(weight),
                        None if norm_weight is None else norm_weight.contiguous(), eps, cos.contiguous(),
                        sin.contiguous(), position.reshape(1), k_cache, v_cache, n_heads)
