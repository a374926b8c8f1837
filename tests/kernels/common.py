"""Helpers for the kernel tests: the Triton requirement, inputs, and comparison against float64 references."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor

from tests.model.reference import assert_close_scaled

# Ours in the given dtype against float64 on the same (rounded) inputs; atol is relative to the tensor's scale.
TOLERANCES = {
    torch.float32: dict(rtol=1e-4, atol=2e-5),
    torch.float16: dict(rtol=5e-3, atol=5e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}
ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")


def require_triton() -> None:
    """Call at the top of a test module, before importing scratchlm.kernels modules: without Triton the module is
    skipped locally and fails under CI=true (CI must run what it claims to test)."""
    if importlib.util.find_spec("triton") is not None:
        return
    message = "triton is not installed (pip install 'triton>=3.6'); the kernel tests run it on CPU via TRITON_INTERPRET=1"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


def leaf(*shape: int, dtype: torch.dtype, device: torch.device = DEVICE, scale: float = 1.0) -> Tensor:
    """Random N(0, scale^2) leaf, drawn in float64 then rounded to `dtype` (the reference sees the same values)."""
    return (torch.randn(*shape, dtype=torch.float64, device=device) * scale).to(dtype).requires_grad_()


def check_fwd_bwd(ours: Callable[..., Tensor], reference: Callable[..., Tensor], inputs: Sequence[Tensor],
                  rtol: float, atol: float) -> None:
    """ours(*inputs) against reference(*float64 copies): output, then every input's gradient under one random
    cotangent. Errors name the tensor and give max/mean differences (torch.testing); NaN never passes."""
    out = ours(*inputs)
    wide = [x.detach().double().requires_grad_() for x in inputs]
    expected = reference(*wide)
    assert out.shape == expected.shape and out.dtype == inputs[0].dtype, (out.shape, out.dtype)
    assert_close_scaled(out.double(), expected, "output", rtol=rtol, atol=atol)
    cotangent = torch.randn_like(expected).to(out.dtype)
    grads = torch.autograd.grad(out, inputs, cotangent)
    expected_grads = torch.autograd.grad(expected, wide, cotangent.double())
    for i, (g, e) in enumerate(zip(grads, expected_grads)):
        assert g.dtype == inputs[i].dtype and g.shape == inputs[i].shape, (i, g.dtype, g.shape)
        assert_close_scaled(g.double(), e, f"gradient of input {i} {tuple(e.shape)}", rtol=rtol, atol=atol)


def rotate64(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE in float64 on (..., D), pairs (j, j + D/2); cos, sin broadcastable to (..., D/2)."""
    x1, x2 = x.double().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
