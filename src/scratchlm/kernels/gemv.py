"""y = x W^T for a single row x, in Triton: the matrix-vector products of batch-1 decoding.

A batch-1 decode step is one row through every weight matrix, so its time is reading the weights. cuBLAS
runs a single row as a narrow GEMM (tiles of 64 output columns on an H100: a 2048 x 6144 matrix gets 96
programs for 132 SMs) and reached about a quarter of the copy bandwidth on GPT-2-small's matrices
(docs/inference.md). Here every program owns BLOCK_N = 2 output columns (thousands of small programs keep
the most loads in flight) and streams its rows of W (contiguous: W is (N, K) row-major) in BLOCK_K chunks
against the row x, accumulating in float32.

Fused around the product, because a one-row decode step is a chain of tiny kernels whose launch-to-finish
latency, not bandwidth, is most of their time: RMSNorm before it (every program recomputes the row's rstd:
K values from L2), SwiGLU's silu(gate) * up before the down projection, the residual add after it. The model
passes these to `scratchlm.model.layers.linear`, which runs them here for one half-precision row on CUDA under
no_grad (batch-1 decoding) and as separate operations everywhere else. On by default; `enabled(False)` is the
A/B (benchmarks/gemv.py for the kernel alone, benchmarks/inference.py's "-gemv" modes for decoding): on an
H100 it read the 15 decode matrices of the three GPT presets 1.12-1.76x faster than cuBLAS, and batch-1
decoding of gpt2-small went from 1,635 to 2,171 tokens/s compiled.

On Hopper the kernel is launched with programmatic dependent launch (`kernels.pdl_options`): each program
reads its first chunk of weights, which nothing before it writes, then waits for the previous kernel
(`gdc_wait`) and lets the next one start (`gdc_launch_dependents`); in a chain of GEMVs each one's weight
reads overlap the previous one's tail (H100, batch-1 decode, gpt2-small: 2,708 -> 2,997 tokens/s).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import triton
import triton.language as tl
from torch import Tensor

from scratchlm import kernels

INTERPRETED = bool(triton.knobs.runtime.interpret)

MAX_BLOCK_K = 2048  # see `config`
DTYPES = (torch.float16, torch.bfloat16)  # where a row is worth a kernel of its own (float32: tests only)

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
    return (_enabled and x.is_cuda and x.dtype in DTYPES and weight.dtype == x.dtype
            and x.numel() == x.shape[-1] and not torch.is_grad_enabled())


@triton.jit
def _chunk_product(X, G, w, offs_k, K, rstd, NORM: tl.constexpr, GATED: tl.constexpr):
    """sum over one chunk of columns of w (BLOCK_N, BLOCK_K) * the prepared input row -> (BLOCK_N,) float32."""
    col_ok = offs_k < K
    x = tl.load(X + offs_k, mask=col_ok, other=0.0).to(tl.float32)  # (BLOCK_K,)
    if GATED:  # X holds [gate, up]: the input is silu(gate) * up, rounded as the unfused model rounds it
        up = tl.load(X + K + offs_k, mask=col_ok, other=0.0).to(tl.float32)
        x = (x * tl.sigmoid(x) * up).to(X.dtype.element_ty).to(tl.float32)
    if NORM:  # x * rstd * g, rounded to the activation dtype like RMSNorm's output
        g = tl.load(G + offs_k, mask=col_ok, other=0.0).to(tl.float32)
        x = (x * rstd * g).to(X.dtype.element_ty).to(tl.float32)
    return tl.sum(w.to(tl.float32) * x[None, :], axis=1)


@triton.jit
def _gemv_kernel(X, W, Y, G, R, N, K, stride_wn, eps, NORM: tl.constexpr, GATED: tl.constexpr,
                 RESIDUAL: tl.constexpr, PDL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = offs_n < N
    w_rows = W + offs_n.to(tl.int64)[:, None] * stride_wn
    # The weights' first chunk (all of a row up to 2048 columns) does not depend on the kernel before: under
    # programmatic dependent launch it is read while that kernel finishes. Everything else waits for it.
    offs_k = tl.arange(0, BLOCK_K)
    w_first = tl.load(w_rows + offs_k[None, :], mask=row_ok[:, None] & (offs_k < K)[None, :], other=0.0)
    if PDL:
        tl.extra.cuda.gdc_wait()  # the previous kernel's writes (x, the residual) are visible from here
        tl.extra.cuda.gdc_launch_dependents()  # and the next kernel may start reading its own weights
    rstd = 0.0
    if NORM:  # every program computes the row's rstd itself: K values, from L2, instead of a kernel of its own
        squares = tl.zeros((BLOCK_K,), tl.float32)
        for start in range(0, K, BLOCK_K):
            offs_k = start + tl.arange(0, BLOCK_K)
            x = tl.load(X + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
            squares += x * x
        rstd = tl.rsqrt(tl.sum(squares, axis=0) / K + eps)
    acc = _chunk_product(X, G, w_first, tl.arange(0, BLOCK_K), K, rstd, NORM, GATED)
    for start in range(BLOCK_K, K, BLOCK_K):
        offs_k = start + tl.arange(0, BLOCK_K)
        w = tl.load(w_rows + offs_k[None, :], mask=row_ok[:, None] & (offs_k < K)[None, :], other=0.0)
        acc += _chunk_product(X, G, w, offs_k, K, rstd, NORM, GATED)
    if RESIDUAL:  # residual + (x W^T rounded), as the unfused model adds two tensors of the activation dtype
        acc = acc.to(Y.dtype.element_ty).to(tl.float32) + tl.load(R + offs_n, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(Y + offs_n, acc.to(Y.dtype.element_ty), mask=row_ok)


def config(k: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) for a K-column matrix. Two rows a program, whatever N: many
    small programs keep the most loads in flight (the H100 sweep of benchmarks/gemv.py, BLOCK_N 1-32, tiles of
    2k-16k elements, 2-8 warps, 1 or 3 stages, had BLOCK_N = 2 fastest on 14 of the 15 decode matrices of the
    three GPT presets); K in chunks of up to 2048 columns, 8 warps for chunks that long."""
    block_k = min(MAX_BLOCK_K, triton.next_power_of_2(k))
    return 2, block_k, 8 if block_k >= 2048 else 4, 3


def launch(x: Tensor, weight: Tensor, norm_weight: Tensor | None = None, eps: float = 1e-5,
           residual: Tensor | None = None, gated: bool = False,
           tiles: tuple[int, int, int, int] | None = None) -> Tensor:
    """The kernel on checked, contiguous inputs. tiles: (BLOCK_N, BLOCK_K, num_warps, num_stages), default
    `config(K)` (benchmarks/gemv.py sweeps the alternatives)."""
    n, k = weight.shape
    y = kernels.output_buffer((*x.shape[:-1], n), x.dtype, x.device)
    block_n, block_k, num_warps, num_stages = tiles or config(k)
    pdl = kernels.pdl_options(x)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight, y, x if norm_weight is None else norm_weight, x if residual is None else residual, n, k,
        weight.stride(0), eps, NORM=norm_weight is not None, GATED=gated, RESIDUAL=residual is not None,
        PDL=bool(pdl), BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages, **pdl)
    return y


@torch.library.custom_op("scratchlm::gemv", mutates_args=())
def _gemv_op(x: Tensor, weight: Tensor, norm_weight: Tensor | None, eps: float, residual: Tensor | None,
             gated: bool) -> Tensor:
    return launch(x, weight, norm_weight, eps, residual, gated)


@_gemv_op.register_fake
def _(x: Tensor, weight: Tensor, norm_weight: Tensor | None, eps: float, residual: Tensor | None,
      gated: bool) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def gemv(x: Tensor, weight: Tensor, norm_weight: Tensor | None = None, eps: float = 1e-5,
         residual: Tensor | None = None, gated: bool = False) -> Tensor:
    """x (..., K) holding one row, weight (N, K) -> x @ weight.T (..., N), in x's dtype; forward only.
    Fused around the product (what a decode step does next to each matrix, saved a kernel each):
      norm_weight (K,): RMSNorm first, x * rsqrt(mean(x^2) + eps) * norm_weight;
      gated: x is (..., 2K) = [gate, up] and the input is silu(gate) * up (SwiGLU's down projection);
      residual (..., N): added to the product."""
    kernels.check_device(INTERPRETED, *(t for t in (x, weight, norm_weight, residual) if t is not None))
    kernels.check_dtype("gemv inputs", x.dtype)
    n, k = weight.shape if weight.dim() == 2 else (-1, -1)
    if weight.dtype != x.dtype or k < 0 or x.shape[-1] != k * (2 if gated else 1) or x.numel() != x.shape[-1]:
        raise ValueError(f"gemv needs one row x (..., {'2K' if gated else 'K'}) and weight (N, K) of its dtype, "
                         f"got x {tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)} {weight.dtype}")
    if norm_weight is not None and (gated or norm_weight.shape != (k,)):
        raise ValueError(f"norm_weight must be ({k},) and not combined with gated, got {tuple(norm_weight.shape)}")
    if residual is not None and (residual.shape != (*x.shape[:-1], n) or residual.dtype != x.dtype):
        raise ValueError(f"residual must be {(*x.shape[:-1], n)} {x.dtype}, got {tuple(residual.shape)} "
                         f"{residual.dtype}")
    return _gemv_op(x.contiguous(), weight if weight.stride(1) == 1 else weight.contiguous(),
                    None if norm_weight is None else norm_weight.contiguous(), eps,
                    None if residual is None else residual.contiguous(), gated)
