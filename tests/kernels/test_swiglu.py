"""The Triton SwiGLU gate (silu(gate) * up of a few rows) against float64, across a chunk edge; argument
checks; and the model's MLP under no_grad through it, equal to the PyTorch operations."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.common import DEVICE, TOLERANCES, require_triton
from tests.model.reference import assert_close_scaled

require_triton()

from scratchlm.kernels import swiglu as sw  # noqa: E402


@pytest.mark.parametrize("shape", [(1, 3, 2 * 40), (5, 2 * (sw.BLOCK + 7))], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_swiglu_matches_float64(shape, dtype):
    x = (torch.randn(*shape, dtype=torch.float64, device=DEVICE) * 3).to(dtype)
    gate, up = x.double().chunk(2, dim=-1)
    out = sw.swiglu(x)
    assert out.shape == (*shape[:-1], shape[-1] // 2) and out.dtype == dtype
    assert_close_scaled(out.double(), gate * torch.sigmoid(gate) * up, "silu(gate) * up", **TOLERANCES[dtype])


def test_swiglu_arguments_are_checked():
    with pytest.raises(ValueError, match=r"\(\.\.\., 2 F\)"):
        sw.swiglu(torch.randn(2, 7, device=DEVICE))
    with pytest.raises(ValueError, match="must be float16, bfloat16 or float32"):
        sw.swiglu(torch.zeros(2, 8, dtype=torch.long, device=DEVICE))


def test_the_mlp_of_several_rows_goes_through_it(monkeypatch):
    from scratchlm.model import layers

    calls = []

    def counted(x):
        calls.append(x.shape)
        return sw.swiglu(x)

    torch.manual_seed(0)
    mlp = layers.SwiGLU(16, 40, device=DEVICE)
    x = torch.randn(2, 3, 16, device=DEVICE)
    results = {}
    for name, kernel in (("torch", None), ("kernel", counted)):
        monkeypatch.setattr(layers, "_swiglu", kernel)
        monkeypatch.setattr(layers, "_inference_kernels_device_type", DEVICE.type)
        with torch.no_grad():
            results[name] = mlp(x)
        assert mlp(x).grad_fn is not None  # training keeps the differentiable operations
    assert calls == [(2, 3, 80)]
    torch.testing.assert_close(results["kernel"], results["torch"], rtol=1e-5, atol=1e-5)
