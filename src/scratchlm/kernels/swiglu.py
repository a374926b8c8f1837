"""SwiGLU's gate of a few decode rows in one Triton kernel: silu(gate) * up.

Between the gate-up and the down projections of several rows (batched decoding, speculative verification),
`silu(gate) * up` is three PyTorch kernels (sigmoid, two products) for a few kilobytes; in a CUDA graph each
costs a few microseconds. Here one program per (row, chunk) computes it in float32 and rounds once, as the
one-row GEMV does for batch-1 decoding (`scratchlm.kernels.gemv`, gated).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from scratchlm import kernels

INTERPRETED = bool(triton.knobs.runtime.interpret)

BLOCK = 1024  # elements of a row a program takes


@triton.jit
def _swiglu_kernel(X, Y, width, BLOCK: tl.constexpr, PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < width
    if PDL:  # the gate-up projection comes from the kernel before
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    gate = tl.load(X + row * 2 * width + offs, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(X + row * 2 * width + width + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(Y + row * width + offs, (gate * tl.sigmoid(gate) * up).to(Y.dtype.element_ty), mask=ok)


@torch.library.custom_op("scratchlm::swiglu", mutates_args=())
def _swiglu_op(x: Tensor) -> Tensor:
    width = x.shape[-1] // 2
    rows = x.numel() // x.shape[-1]
    y = kernels.output_buffer((*x.shape[:-1], width), x.dtype, x.device)
    pdl = kernels.pdl_options(x)
    _swiglu_kernel[(rows, triton.cdiv(width, BLOCK))](x, y, width, BLOCK=BLOCK, PDL=bool(pdl), num_warps=4, **pdl)
    return y


@_swiglu_op.register_fake
def _(x: Tensor) -> Tensor:
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


def swiglu(x: Tensor) -> Tensor:
    """x (..., 2 F) = [gate, up] -> silu(gate) * up (..., F), computed in float32, in x's dtype."""
    kernels.check_device(INTERPRETED, x)
    kernels.check_dtype("x", x.dtype)
    if x.dim() < 1 or x.shape[-1] % 2:
        raise ValueError(f"x must be (..., 2 F) = [gate, up], got {tuple(x.shape)}")
    return _swiglu_op(x.contiguous())
