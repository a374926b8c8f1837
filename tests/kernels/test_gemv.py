"""The Triton GEMV (one row x W^T) against a float64 matmul: sizes that leave partial column blocks and partial
K chunks, leading shapes, every tile choice; launcher errors; on a GPU, Linear's dispatch."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.common import DEVICE, ON_GPU, TOLERANCES, require_triton
from tests.model.reference import assert_close_scaled

require_triton()

from scratchlm.kernels import gemv as gv  # noqa: E402
from scratchlm.kernels.gemv import gemv  # noqa: E402


def operands(n: int, k: int, dtype: torch.dtype, lead: tuple[int, ...] = (1,)) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(*lead, k, dtype=torch.float64, device=DEVICE).to(dtype)
    w = (torch.randn(n, k, dtype=torch.float64, device=DEVICE) / k**0.5).to(dtype)
    return x, w


@pytest.mark.parametrize(("n", "k", "lead"), [(37, 100, (1,)), (64, 64, (1, 1)), (130, 300, (1, 1, 1)), (5, 9, ())],
                         ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gemv_matches_float64(n, k, lead, dtype):
    x, w = operands(n, k, dtype, lead)
    y = gemv(x, w)
    assert y.shape == (*lead, n) and y.dtype == dtype
    assert_close_scaled(y.double(), x.double() @ w.double().T, "output", **TOLERANCES[dtype])


@pytest.mark.parametrize("sms", [1, 8, 1000])  # BLOCK_N from 32 down to 2, BLOCK_K from small to all of K
def test_every_tile_choice(monkeypatch, sms):
    monkeypatch.setattr(gv.kernels, "sm_count", lambda device: sms)
    x, w = operands(200, 700, torch.float32)
    assert_close_scaled(gemv(x, w).double(), x.double() @ w.double().T, "output", **TOLERANCES[torch.float32])


def test_tiles_keep_every_sm_busy():
    assert gv.tiles(768, 768, 132) == (2, 1024)  # 384 programs
    assert gv.tiles(6144, 2048, 132) == (16, 256)  # 384 programs
    assert gv.tiles(50304, 768, 132) == (32, 128)  # already plenty: widest blocks
    for n, k in [(768, 768), (6144, 2048), (50304, 768), (3, 5)]:
        block_n, block_k = gv.tiles(n, k, 132)
        assert block_n * block_k <= gv.TILE and block_k <= max(k, 1) * 2


def test_launcher_rejects_bad_inputs():
    x, w = operands(8, 16, torch.float32)
    with pytest.raises(ValueError, match="one row"):
        gemv(torch.cat([x, x]), w)
    with pytest.raises(ValueError, match="one row"):
        gemv(x[..., :15], w)
    with pytest.raises(ValueError, match="one row"):
        gemv(x, w.half())


def test_applies_only_to_one_half_row_on_cuda_without_grad():
    x, w = operands(8, 16, torch.bfloat16)
    assert not gv.applies(x.cpu(), w.cpu())  # CPU: the matmul
    if ON_GPU:
        with torch.no_grad():
            assert not gv.applies(x, w)  # off by default
            with gv.enabled(True):
                assert gv.applies(x, w) and not gv.applies(torch.cat([x, x]), w)
                assert not gv.applies(x.float(), w.float())
        with gv.enabled(True):
            assert not gv.applies(x, w)  # autograd on: training keeps the matmul


@pytest.mark.gpu
def test_linear_dispatches_decode_rows_to_the_kernel():
    """Switched on, a bf16 Linear under no_grad gives a one-row input to the kernel (the float64 product within
    bf16 rounding, like the matmul)."""
    from scratchlm.model.layers import Linear

    layer = Linear(2048, 6144, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, 1, 2048, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        matmul = layer(x)
        with gv.enabled(True):
            ours = layer(x)
    assert_close_scaled(ours.double(), (x.double() @ layer.weight.double().T), "kernel", **TOLERANCES[torch.bfloat16])
    assert_close_scaled(matmul.double(), (x.double() @ layer.weight.double().T), "matmul", **TOLERANCES[torch.bfloat16])
