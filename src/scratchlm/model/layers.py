"""The building blocks, written on tensors: Linear, Embedding, RMSNorm, SwiGLU, softmax."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from scratchlm import kernels


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types (their sums and exponentials lose too much), the dtype itself when wider."""
    return torch.promote_types(dtype, torch.float32)


def trunc_normal_(tensor: Tensor, std: float) -> Tensor:
    """In-place N(0, std^2) truncated at +-3 std (keeps rare huge initial weights out)."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-3 * std, b=3 * std)


class _GemvKernels(NamedTuple):
    """scratchlm.kernels.gemv's entry points (kept as functions, not the module, so that models still deep-copy)."""

    applies: Callable[[Tensor, Tensor], bool]  # one row: gemv, gemv_qkv
    gemv: Callable[..., Tensor]
    gemv_qkv: Callable[..., Tensor]
    applies_rows: Callable[[Tensor, Tensor], bool] | None = None  # 2 to 16 rows: gemv_rows, gemv_rows_qkv
    gemv_rows: Callable[..., Tensor] | None = None
    gemv_rows_qkv: Callable[..., Tensor] | None = None


_gemv: _GemvKernels | None = None  # scratchlm.kernels.gemv once a Linear found it
_swiglu: Callable[[Tensor], Tensor] | None = None  # scratchlm.kernels.swiglu.swiglu, likewise
_add_rms_norm: Callable[..., tuple[Tensor, Tensor]] | None = None  # scratchlm.kernels.rmsnorm.add_rms_norm
_inference_kernels_device_type = "cuda"  # where the several-row kernels run (tests force the CPU, interpreted)


def _load_kernels() -> None:
    """Find scratchlm.kernels.gemv, .swiglu and .rmsnorm's add_rms_norm when there is a GPU and Triton imports.
    Called as Linear layers are built (an import inside a torch.compile'd forward would break the graph)."""
    global _gemv, _swiglu, _add_rms_norm
    if _gemv is None and (module := kernels.gpu_module("gemv")) is not None:
        _gemv = _GemvKernels(module.applies, module.gemv, module.gemv_qkv, module.applies_rows, module.gemv_rows,
                             module.gemv_rows_qkv)
    if _swiglu is None and (module := kernels.gpu_module("swiglu")) is not None:
        _swiglu = module.swiglu
    if _add_rms_norm is None and (module := kernels.gpu_module("rmsnorm")) is not None:
        _add_rms_norm = module.add_rms_norm


def inference_rows(x: Tensor, under_compile: bool = False) -> bool:
    """Rows that the several-row inference kernels take: CUDA, a kernel dtype, under no_grad, and outside
    torch.compile unless `under_compile` (Inductor fuses pointwise work itself; not an indexed cache store)."""
    return (x.device.type == _inference_kernels_device_type and x.dtype in kernels.KERNEL_DTYPES
            and not torch.is_grad_enabled() and (under_compile or not torch.compiler.is_compiling()))


def one_row_kernels(x: Tensor, weight: Tensor) -> _GemvKernels | None:
    """The GEMV kernels when they take this product (one half-precision CUDA row under no_grad, the kernel on:
    batch-1 decoding), else None."""
    return _gemv if _gemv is not None and _gemv.applies(x, weight) else None


def few_rows_kernels(x: Tensor, weight: Tensor) -> _GemvKernels | None:
    """The GEMV kernels when their several-row product takes x W^T (2 to 16 half-precision CUDA rows under
    no_grad, the kernel on: a speculative verification pass, a small decode batch), else None."""
    found = _gemv is not None and _gemv.applies_rows is not None and _gemv.applies_rows(x, weight)
    return _gemv if found else None


def linear(x: Tensor, weight: Tensor, norm: RMSNorm | None = None, gated: bool = False,
           residual: Tensor | None = None, gate_output: bool = False) -> Tensor:
    """residual + f(x) W^T, where f is `norm`, or silu(gate) * up of x = [gate, up] when `gated`, or nothing;
    gate_output: silu(gate) * up of the product [gate, up] instead (SwiGLU's gate after its first matrix rather
    than before the second; no residual then). One row under the Triton GEMV (batch-1 decoding, see
    scratchlm.kernels.gemv.enabled) runs norm, gated and residual in its kernel; 2 to 16 rows take its several-row
    kernel for the product and gate_output (`few_rows_kernels`); otherwise these are separate operations."""
    if gate_output and residual is not None:
        raise ValueError("gate_output takes no residual")
    if (fused := one_row_kernels(x, weight)) is not None:
        y = fused.gemv(x, weight, None if norm is None else norm.weight, 1e-5 if norm is None else norm.eps,
                       residual, gated)
        return swiglu_gate(y) if gate_output else y
    if norm is not None:
        x = norm(x)
    if gated:
        x = swiglu_gate(x)
    if (few := few_rows_kernels(x, weight)) is not None:
        y = few.gemv_rows(x, weight, gate_output)
    else:
        y = x @ weight.T
        y = swiglu_gate(y) if gate_output else y
    return y if residual is None else residual + y


class Linear(nn.Module):
    """y = x W^T, no bias. W: (d_out, d_in), initialised N(0, std^2) truncated at 3 std, std = sqrt(2/(d_in + d_out))
    unless given. `row_splits` marks a fused layer: W is the row-wise stack of matrices of these heights.
    forward's norm / gated / residual options fuse what comes before and after a projection (see `linear`)."""

    def __init__(self, d_in: int, d_out: int, std: float | None = None, row_splits: tuple[int, ...] | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.std = math.sqrt(2.0 / (d_in + d_out)) if std is None else std
        if row_splits is not None and sum(row_splits) != d_out:
            raise ValueError(f"row_splits {row_splits} must add up to d_out = {d_out}")
        self.row_splits = row_splits
        self.weight = nn.Parameter(torch.empty(d_out, d_in, device=device, dtype=dtype))
        _load_kernels()
        self.init_weights()

    def init_weights(self) -> None:
        trunc_normal_(self.weight, self.std)
        if self.row_splits is not None:
            # A fused layer (q/k/v, gate/up) is several matrices stacked by rows; optimizers that treat a
            # matrix as one linear map (Muon) read this tag to handle each separately. Set here so that it
            # survives materialising from the meta device (to_empty makes new Parameters, then init_weights).
            self.weight.row_splits = self.row_splits

    def forward(self, x: Tensor, norm: RMSNorm | None = None, gated: bool = False, residual: Tensor | None = None,
                gate_output: bool = False) -> Tensor:
        # (..., d_in, or 2 d_in if gated) -> (..., d_out, or d_out / 2 if gate_output)
        return linear(x, self.weight, norm, gated, residual, gate_output)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}"


class Embedding(nn.Module):
    """Token id -> vector lookup. weight: (vocab_size, d_model), initialised N(0, std^2) truncated at 3 std."""

    def __init__(self, vocab_size: int, d_model: int, std: float = 1.0, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.vocab_size, self.d_model, self.std = vocab_size, d_model, std
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model, device=device, dtype=dtype))
        self.init_weights()

    def init_weights(self) -> None:
        trunc_normal_(self.weight, self.std)

    def forward(self, token_ids: Tensor) -> Tensor:  # (...) long -> (..., d_model)
        return self.weight[token_ids]

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, d_model={self.d_model}"


NORM_BACKENDS = ("auto", "torch", "triton")


def triton_rms_norm(backend: str) -> Callable[[Tensor, Tensor, float], Tensor] | None:
    """The Triton RMSNorm (scratchlm.kernels.rmsnorm) if `backend` may use it: "triton" requires it, "auto" takes
    it when there is a GPU and Triton imports, "torch" never does."""
    if backend not in NORM_BACKENDS:
        raise ValueError(f"unknown norm backend {backend!r}; choose from {list(NORM_BACKENDS)}")
    if backend == "torch" or (backend == "auto" and not torch.cuda.is_available()):
        return None
    try:
        return importlib.import_module("scratchlm.kernels.rmsnorm").rms_norm
    except ImportError as e:
        if backend == "triton":
            raise ValueError(f"norm backend 'triton' is not available ({e}); use 'torch'") from e
        return None


class RMSNorm(nn.Module):
    """x / rms(x) * g over the last dimension, computed in at least float32 (bf16 squares lose too much), cast back.
    backend: "torch" (below), "triton" (the fused kernel, same arithmetic), "auto" (triton for CUDA tensors of the
    dtypes it handles when Triton is installed, else torch)."""

    def __init__(self, d_model: int, eps: float = 1e-5, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, backend: str = "auto"):
        super().__init__()
        self.eps, self.backend = eps, backend
        self.weight = nn.Parameter(torch.empty(d_model, device=device, dtype=dtype))
        # Imported here, not in forward: an import inside a torch.compile'd forward would break the graph.
        self.triton_kernel = triton_rms_norm(backend)
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.ones_(self.weight)

    def add(self, x: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        """(norm(s), s) for s = residual + x: a residual add and the norm after it, in one kernel for inference
        rows (scratchlm.kernels.rmsnorm.add_rms_norm; see `fuses_residual_adds`), else the two operations (also
        where the dtypes differ: a float32 residual stream under autocast adds bfloat16 block outputs)."""
        if _adds_in_kernel(x, self) and x.dtype == residual.dtype:
            return _add_rms_norm(x, residual, self.weight, self.eps)
        summed = residual + x
        return self(summed), summed

    def forward(self, x: Tensor) -> Tensor:  # (..., d_model) -> same
        if self.triton_kernel is not None and (self.backend == "triton" or (
                x.is_cuda and x.dtype in (torch.float16, torch.bfloat16, torch.float32))):
            return self.triton_kernel(x, self.weight, self.eps)
        wide = x.to(compute_dtype(x.dtype))
        normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.to(wide.dtype)).to(x.dtype)


def silu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def _adds_in_kernel(x: Tensor, norm: RMSNorm) -> bool:
    """Whether `norm` can take the residual add of x in its kernel (scratchlm.kernels.rmsnorm.add_rms_norm)."""
    return _add_rms_norm is not None and norm.triton_kernel is not None and inference_rows(x)


def fuses_residual_adds(x: Tensor, norm: RMSNorm) -> bool:
    """Whether a model forward of x (batch, seq, d_model) adds each residual in the kernel of the RMSNorm that
    follows it (`RMSNorm.add`): several inference rows (one row has it all in the GEMV) with the kernel there."""
    return _adds_in_kernel(x, norm) and x.numel() != x.shape[-1]


def swiglu_gate(x: Tensor) -> Tensor:
    """x (..., 2 F) = [gate, up] -> silu(gate) * up (..., F). Rows on CUDA under no_grad (decoding several rows)
    take one kernel (scratchlm.kernels.swiglu, float32 inside) instead of three; not under torch.compile, which
    fuses the three itself (and a compiled no_grad evaluation in training stays free of our inference ops)."""
    if _swiglu is not None and inference_rows(x):
        return _swiglu(x)
    gate, up = x.chunk(2, dim=-1)
    return silu(gate) * up


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)). Gate and up share one matrix (one GEMM instead of two): rows [0, d_ff) are
    the gate, rows [d_ff, 2 d_ff) the up projection (what `linear(..., gated=True)` splits)."""

    def __init__(self, d_model: int, d_ff: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.d_ff = d_ff
        std = math.sqrt(2.0 / (d_model + d_ff))  # as two separate d_model x d_ff matrices
        self.gate_up_proj = Linear(d_model, 2 * d_ff, std=std, row_splits=(d_ff, d_ff), device=device, dtype=dtype)
        self.down_proj = Linear(d_ff, d_model, device=device, dtype=dtype)

    def forward(self, x: Tensor, norm: RMSNorm | None = None, residual: Tensor | None = None) -> Tensor:
        """(..., d_model) -> same: residual + down(silu(gate) * up) of norm(x) (norm and residual optional: given
        here, one-row decoding fuses them into the projections). The gate goes with the matrix whose kernel
        takes it: the down projection's input in the one-row GEMV, else the gate/up product's output (the
        several-row kernel's epilogue for 2-16 rows; the same operations in the same order elsewhere)."""
        if one_row_kernels(x, self.down_proj.weight) is not None:
            return self.down_proj(self.gate_up_proj(x, norm=norm), gated=True, residual=residual)
        return self.down_proj(self.gate_up_proj(x, norm=norm, gate_output=True), residual=residual)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """exp(x - max) / sum: stable for any finite input and for rows that are -inf except at least one entry."""
    shifted = x - x.amax(dim=dim, keepdim=True)
    e = torch.exp(shifted)
    return e / e.sum(dim=dim, keepdim=True)
