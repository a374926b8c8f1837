"""y = x W^T for a single row x, in Triton: the matrix-vector products of batch-1 decoding.

A batch-1 decode step is one row through every weight matrix, so its time is reading the weights. cuBLAS
runs a single row as a narrow GEMM (tiles of 64 output columns on an H100: a 2048 x 6144 matrix gets 96
programs for 132 SMs) and reached about a quarter of the copy bandwidth on GPT-2-small's matrices
(docs/inference.md). Here every program owns BLOCK_N output columns, chosen so that there are a few programs
per SM whatever N, and streams its rows of W (contiguous: W is (N, K) row-major) in BLOCK_K chunks against
the row x, accumulating in float32.

Used by `scratchlm.model.layers.Linear` for one-row inputs on CUDA under no_grad (decoding) inside
`enabled(True)`. Off by default until a GPU measurement shows it beating cuBLAS (benchmarks/inference.py's
`graphs-gemv` mode is the A/B); the tests check it against float64 everywhere.
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

TILE = 4096  # elements of W per loop step and program: BLOCK_N x BLOCK_K
PROGRAMS_PER_SM = 2
DTYPES = (torch.float16, torch.bfloat16)  # where a row is worth a kernel of its own (float32: tests only)

_enabled = False  # see the module docstring


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
    """Linear's test: one row, a half-precision CUDA tensor, no autograd, the kernel on."""
    return (_enabled and x.is_cuda and x.dtype in DTYPES and weight.dtype == x.dtype
            and x.numel() == x.shape[-1] and not torch.is_grad_enabled())


@triton.jit
def _gemv_kernel(X, W, Y, N, K, stride_wn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = offs_n < N
    w_rows = W + offs_n.to(tl.int64)[:, None] * stride_wn
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for start in range(0, K, BLOCK_K):
        offs_k = start + tl.arange(0, BLOCK_K)
        col_ok = offs_k < K
        x = tl.load(X + offs_k, mask=col_ok, other=0.0).to(tl.float32)  # (BLOCK_K,)
        w = tl.load(w_rows + offs_k[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_K)
        acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
    tl.store(Y + offs_n, acc.to(Y.dtype.element_ty), mask=row_ok)


def tiles(n: int, k: int, sm_count: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K): the largest power-of-two BLOCK_N (2 to 32) that still gives PROGRAMS_PER_SM
    programs per SM, and BLOCK_K filling a TILE-element tile (at most K rounded up to a power of two)."""
    block_n = 32
    while block_n > 2 and triton.cdiv(n, block_n) < PROGRAMS_PER_SM * sm_count:
        block_n //= 2
    return block_n, min(TILE // block_n, triton.next_power_of_2(k))


def _launch(x: Tensor, weight: Tensor) -> Tensor:
    n, k = weight.shape
    y = kernels.output_buffer((*x.shape[:-1], n), x.dtype, x.device)
    block_n, block_k = tiles(n, k, kernels.sm_count(x.device))
    _gemv_kernel[(triton.cdiv(n, block_n),)](x, weight, y, n, k, weight.stride(0), BLOCK_N=block_n, BLOCK_K=block_k,
                                             num_warps=4)
    return y


@torch.library.custom_op("scratchlm::gemv", mutates_args=())
def _gemv_op(x: Tensor, weight: Tensor) -> Tensor:
    return _launch(x, weight)


@_gemv_op.register_fake
def _(x: Tensor, weight: Tensor) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def gemv(x: Tensor, weight: Tensor) -> Tensor:
    """x (..., K) holding one row, weight (N, K) -> x @ weight.T (..., N), in x's dtype; forward only."""
    kernels.check_device(INTERPRETED, x, weight)
    kernels.check_dtype("gemv inputs", x.dtype)
    if weight.dtype != x.dtype or weight.dim() != 2 or x.shape[-1] != weight.shape[1] or x.numel() != x.shape[-1]:
        raise ValueError(f"gemv needs one row x (..., K) and weight (N, K) of its dtype, got x {tuple(x.shape)} "
                         f"{x.dtype}, weight {tuple(weight.shape)} {weight.dtype}")
    return _gemv_op(x.contiguous(), weight if weight.stride(1) == 1 else weight.contiguous())
