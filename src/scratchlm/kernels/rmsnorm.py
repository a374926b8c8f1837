"""RMSNorm in Triton, forward and backward, with its PyTorch reference (hand-written backward) beside it.

y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps) over the last dimension, exactly as
`scratchlm.model.layers.RMSNorm`: computed in float32 whatever the input dtype, multiplied by the weight in
float32, cast back to the input's dtype. The weight may have another dtype than x (a float32 weight on
bfloat16 activations under autocast); its gradient comes back in its own dtype.

Backward, with g = dy * w and x_hat = x * rstd (per row, n = d_model):
    dx = rstd * (g - x_hat * mean(g * x_hat))
    dw = sum over rows of dy * x_hat
The forward saves rstd per row (4 bytes a row) so the backward does not recompute the mean square.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from scratchlm import kernels
from scratchlm.model.layers import compute_dtype

# Read by @triton.jit as it decorates the kernels below: True means they run in the CPU interpreter.
INTERPRETED = bool(triton.knobs.runtime.interpret)

MAX_BLOCK_D = 16_384  # one row lives in registers: 16k float32 over 16 warps is 32 values a thread
TILE_ELEMENTS = 4096  # elements a program holds per step; several short rows share a program
PROGRAMS_PER_SM = 4  # backward programs: enough to fill the GPU, few enough that the dw partials stay small
DW_BLOCK_PARTIALS, DW_BLOCK_COLS = 32, 64  # the dw reduction's tile: partial rows x columns a program adds per step


@triton.jit
def _rms_norm_fwd_kernel(
    X, W, Y, RSTD,  # x, y: (n_rows, n_cols) rows strided, columns contiguous; w: (n_cols,); rstd: (n_rows,) fp32
    R, S,  # ADD: residual r and the sum s = x + r (n_rows, n_cols, contiguous), normalised instead of x
    n_rows, n_cols, stride_x, stride_y, eps,
    ADD: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)  # (R,)
    cols = tl.arange(0, BLOCK_D)  # (D,)
    row_ok, col_ok = rows < n_rows, cols < n_cols
    mask = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)[:, None]  # rows * stride overflows int32 past 2^31 elements
    x = tl.load(X + rows64 * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)  # (R, D)
    if ADD:  # the residual add, rounded as the unfused model rounds it, then normalised
        x = x + tl.load(R + rows64 * n_cols + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x = x.to(S.dtype.element_ty)
        tl.store(S + rows64 * n_cols + cols[None, :], x, mask=mask)
        x = x.to(tl.float32)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / n_cols + eps)  # (R,); padded columns add 0 to the sum
    y = x * rstd[:, None] * w[None, :]
    tl.store(Y + rows64 * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit
def _rms_norm_bwd_kernel(
    X, W, DY, RSTD, DX, DW_PARTIAL,  # dw_partial: (n_programs, n_cols) fp32, one row of partial sums a program
    n_rows, n_cols, stride_x, stride_dy, stride_dx, rows_per_program,
    BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < n_cols
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_ROWS, BLOCK_D), dtype=tl.float32)  # this program's share of sum(dy * x_hat)
    first = pid * rows_per_program
    for start in range(first, first + rows_per_program, BLOCK_ROWS):  # the last program may run past n_rows
        rows = start + tl.arange(0, BLOCK_ROWS)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)[:, None]
        x = tl.load(X + rows64 * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows64 * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        x_hat = x * rstd[:, None]
        g = dy * w[None, :]
        mean_gx = tl.sum(g * x_hat, axis=1) / n_cols  # (R,)
        dx = (g - x_hat * mean_gx[:, None]) * rstd[:, None]
        tl.store(DX + rows64 * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * x_hat  # masked rows and columns loaded as 0 add nothing
    tl.store(DW_PARTIAL + pid * n_cols + cols, tl.sum(dw, axis=0), mask=col_ok)


@triton.jit
def _dw_reduce_kernel(DW_PARTIAL, DW, n_partials, n_cols, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """dw = the column sums of the (n_partials, n_cols) float32 partials, stored in the weight's dtype: one
    launch where torch's sum and cast took two."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < n_cols
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for start in range(0, n_partials, BLOCK_P):
        rows = start + tl.arange(0, BLOCK_P)
        acc += tl.load(DW_PARTIAL + rows[:, None] * n_cols + cols[None, :],
                       mask=(rows < n_partials)[:, None] & col_ok[None, :], other=0.0)
    tl.store(DW + cols, tl.sum(acc, axis=0).to(DW.dtype.element_ty), mask=col_ok)


def _tiles(n_cols: int) -> tuple[int, int, int]:
    """(BLOCK_ROWS, BLOCK_D, num_warps). A whole row per tile (BLOCK_D = next power of two >= d_model, so the
    mean square is one in-register reduction); short rows are stacked until a tile holds ~4k elements so each
    program moves enough bytes to hide memory latency; one warp per 512 elements (16 values a thread)."""
    block_d = triton.next_power_of_2(n_cols)
    if block_d > MAX_BLOCK_D:
        raise ValueError(f"rms_norm supports d_model up to {MAX_BLOCK_D}, got {n_cols}")
    block_rows = max(1, TILE_ELEMENTS // block_d)
    num_warps = min(16, max(1, block_rows * block_d // 512))
    return block_rows, block_d, num_warps


def _check(x: Tensor, weight: Tensor) -> None:
    kernels.check_device(INTERPRETED, x, weight)
    kernels.check_dtype("rms_norm input", x.dtype)
    kernels.check_dtype("rms_norm weight", weight.dtype)
    if x.dim() < 1 or weight.dim() != 1 or x.shape[-1] != weight.shape[0]:
        raise ValueError(f"rms_norm needs x (..., d) and weight (d,), got {tuple(x.shape)} and {tuple(weight.shape)}")


def _rows(t: Tensor) -> Tensor:
    """(..., d) -> (n_rows, d) with contiguous columns (a view when the layout allows it, else a copy)."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def rms_norm_forward(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Launcher: y (shape and dtype of x, contiguous) and rstd (n_rows,) float32."""
    _check(x, weight)
    x2, weight = _rows(x), weight.contiguous()
    n_rows, n_cols = x2.shape
    y = kernels.output_buffer((n_rows, n_cols), x.dtype, x.device)
    rstd = kernels.output_buffer((n_rows,), torch.float32, x.device)
    if n_rows:
        block_rows, block_d, num_warps = _tiles(n_cols)
        _rms_norm_fwd_kernel[(triton.cdiv(n_rows, block_rows),)](
            x2, weight, y, rstd, x2, x2, n_rows, n_cols, x2.stride(0), y.stride(0), eps,  # (R, S not read)
            ADD=False, BLOCK_ROWS=block_rows, BLOCK_D=block_d, num_warps=num_warps)
    return y.view(x.shape), rstd


def add_rms_norm_forward(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Launcher of `add_rms_norm`: (rms_norm(x + residual), x + residual), both of x's shape and dtype."""
    _check(x, weight)
    if residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device:
        raise ValueError(f"residual must match x {tuple(x.shape)} {x.dtype}, got {tuple(residual.shape)} "
                         f"{residual.dtype} on {residual.device}")
    x2, r2, weight = _rows(x), residual.reshape(-1, x.shape[-1]).contiguous(), weight.contiguous()
    n_rows, n_cols = x2.shape
    y, summed = (kernels.output_buffer((n_rows, n_cols), x.dtype, x.device) for _ in range(2))
    rstd = kernels.output_buffer((n_rows,), torch.float32, x.device)
    if n_rows:
        block_rows, block_d, num_warps = _tiles(n_cols)
        _rms_norm_fwd_kernel[(triton.cdiv(n_rows, block_rows),)](
            x2, weight, y, rstd, r2, summed, n_rows, n_cols, x2.stride(0), y.stride(0), eps,
            ADD=True, BLOCK_ROWS=block_rows, BLOCK_D=block_d, num_warps=num_warps)
    return y.view(x.shape), summed.view(x.shape)


def rms_norm_backward(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    """Launcher: (dx like x, dw like weight). Each program walks a contiguous run of rows, keeping its part of
    dw in registers, and writes one row of partial sums; summing those (n_programs, d) partials is the second,
    small reduction. No atomics: the result does not depend on the order programs finish in."""
    _check(x, weight)
    if dy.shape != x.shape or rstd.dtype != torch.float32 or rstd.numel() != x.numel() // max(1, x.shape[-1]):
        raise ValueError(f"rms_norm backward: dy {tuple(dy.shape)} / rstd {tuple(rstd.shape)} do not match x "
                         f"{tuple(x.shape)}")
    x2, dy2, weight = _rows(x), _rows(dy), weight.contiguous()
    n_rows, n_cols = x2.shape
    dx = kernels.output_buffer((n_rows, n_cols), x.dtype, x.device)
    block_rows, block_d, num_warps = _tiles(n_cols)
    n_programs = max(1, min(triton.cdiv(n_rows, block_rows), PROGRAMS_PER_SM * kernels.sm_count(x.device)))
    rows_per_program = max(1, triton.cdiv(triton.cdiv(n_rows, n_programs), block_rows)) * block_rows
    n_programs = max(1, triton.cdiv(n_rows, rows_per_program))
    dw = kernels.output_buffer((n_cols,), weight.dtype, x.device)
    if not n_rows:
        return dx.view(x.shape), dw.zero_()
    dw_partial = kernels.output_buffer((n_programs, n_cols), torch.float32, x.device)
    _rms_norm_bwd_kernel[(n_programs,)](
        x2, weight, dy2, rstd, dx, dw_partial, n_rows, n_cols, x2.stride(0), dy2.stride(0), dx.stride(0),
        rows_per_program, BLOCK_ROWS=block_rows, BLOCK_D=block_d, num_warps=num_warps)
    _dw_reduce_kernel[(triton.cdiv(n_cols, DW_BLOCK_COLS),)](dw_partial, dw, n_programs, n_cols,
                                                             BLOCK_P=DW_BLOCK_PARTIALS, BLOCK_C=DW_BLOCK_COLS)
    return dx.view(x.shape), dw


# The launchers as custom ops: torch.compile sees an opaque call with known output shapes (the fake
# implementations) instead of tracing into Triton's launch machinery.
@torch.library.custom_op("scratchlm::rms_norm_fwd", mutates_args=())
def _rms_norm_fwd_op(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return rms_norm_forward(x, weight, eps)


@_rms_norm_fwd_op.register_fake
def _(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(x.shape[:-1].numel(),
                                                                                  dtype=torch.float32)


@torch.library.custom_op("scratchlm::rms_norm_bwd", mutates_args=())
def _rms_norm_bwd_op(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    return rms_norm_backward(dy, x, weight, rstd)


@_rms_norm_bwd_op.register_fake
def _(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight)


@torch.library.custom_op("scratchlm::add_rms_norm", mutates_args=())
def _add_rms_norm_op(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return add_rms_norm_forward(x, residual, weight, eps)


@_add_rms_norm_op.register_fake
def _(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))


def add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """(rms_norm(s), s) for s = x + residual rounded to x's dtype, in one kernel; forward only (inference:
    a residual add and the next RMSNorm of several decoding rows)."""
    return _add_rms_norm_op(x, residual, weight, eps)


class RMSNormFunction(torch.autograd.Function):
    """The Triton RMSNorm with autograd: saves x, the weight and rstd (not y)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        y, rstd = torch.ops.scratchlm.rms_norm_fwd(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, Tensor, None]:
        x, weight, rstd = ctx.saved_tensors
        dx, dw = torch.ops.scratchlm.rms_norm_bwd(dy, x, weight, rstd)
        return dx, dw, None


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """Triton RMSNorm over the last dimension. x: (..., d) float16/bfloat16/float32, weight: (d,)."""
    _check(x, weight)
    return RMSNormFunction.apply(x, weight, eps)


# -- PyTorch reference -----------------------------------------------------------------------------


class RMSNormReference(torch.autograd.Function):
    """The same computation in PyTorch with the same hand-derived backward (in float32, or float64 for
    float64 inputs): the readable twin of the kernels, and a check of the derivation itself."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        wide = x.to(compute_dtype(x.dtype))
        rstd = torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
        ctx.save_for_backward(x, weight, rstd)
        return (wide * rstd * weight.to(wide.dtype)).to(x.dtype)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, Tensor, None]:
        x, weight, rstd = ctx.saved_tensors
        wide = rstd.dtype
        x_hat = x.to(wide) * rstd
        dy = dy.to(wide)
        g = dy * weight.to(wide)
        dx = rstd * (g - x_hat * (g * x_hat).mean(-1, keepdim=True))
        dw = (dy * x_hat).reshape(-1, x.shape[-1]).sum(0)
        return dx.to(x.dtype), dw.to(weight.dtype), None


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    return RMSNormReference.apply(x, weight, eps)
