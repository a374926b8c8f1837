"""The Triton GEMV (one row x W^T) against a float64 matmul: sizes that leave partial column blocks and partial
K chunks, leading shapes, every tile choice, the fused RMSNorm / SwiGLU gate / residual; launcher errors; on a
GPU, Linear's dispatch and a whole decode step with and without the kernel."""

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


@pytest.mark.parametrize("tiles", [(1, 16, 1, 1), (2, 64, 4, 3), (8, 256, 4, 1), (32, 1024, 8, 3)], ids=str)
def test_every_tile_shape(tiles):
    """Column blocks from 1 to 32 rows and K chunks from 16 to beyond K: partial blocks on both axes."""
    x, w = operands(200, 700, torch.float32)
    assert_close_scaled(gv.launch(x, w, tiles=tiles).double(), x.double() @ w.double().T, "output",
                        **TOLERANCES[torch.float32])


def test_default_tiles():
    assert gv.config(768) == (2, 1024, 4, 3)  # K in one chunk
    assert gv.config(5504) == (2, 2048, 8, 3)  # chunks of 2048, wider programs
    assert gv.config(5) == (2, 8, 4, 3)


def rms_norm64(x: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g.double()


@pytest.mark.parametrize(("n", "k"), [(37, 100), (130, 300)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("fusion", ["norm", "gated", "residual", "norm+residual", "gated+residual"])
def test_fused_prologues_and_residual_match_float64(n, k, dtype, fusion):
    """norm: RMSNorm of x first (x scaled far from 1 so a missing normalisation shows); gated: x = [gate, up] and
    the input is silu(gate) * up; residual: added to the product."""
    gated = "gated" in fusion
    x, w = operands(n, k, dtype)
    x = torch.cat([x, torch.randn_like(x)], dim=-1) if gated else x * 7.0
    g = (1 + 0.5 * torch.randn(k, dtype=torch.float64, device=DEVICE)).to(dtype) if "norm" in fusion else None
    r = torch.randn(1, n, dtype=torch.float64, device=DEVICE).to(dtype) if "residual" in fusion else None
    y = gemv(x, w, norm_weight=g, eps=1e-5, residual=r, gated=gated)
    inputs = x.double()
    if g is not None:
        inputs = rms_norm64(inputs, g, 1e-5)
    if gated:
        gate, up = inputs.chunk(2, dim=-1)
        inputs = gate * torch.sigmoid(gate) * up
    expected = inputs @ w.double().T + (0 if r is None else r.double())
    assert y.shape == (1, n) and y.dtype == dtype
    assert_close_scaled(y.double(), expected, "output", **TOLERANCES[dtype])


def test_fusion_arguments_are_checked():
    x, w = operands(8, 16, torch.float32)
    with pytest.raises(ValueError, match=r"norm_weight must be \(16,\)"):
        gemv(x, w, norm_weight=torch.ones(15, device=DEVICE))
    with pytest.raises(ValueError, match="one row"):
        gemv(x, w, gated=True)  # gated wants 2K inputs
    with pytest.raises(ValueError, match="not combined with gated"):
        gemv(torch.cat([x, x], -1), w, norm_weight=torch.ones(16, device=DEVICE), gated=True)
    with pytest.raises(ValueError, match="residual must be"):
        gemv(x, w, residual=torch.zeros(1, 9, device=DEVICE))


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
            assert gv.applies(x, w) and not gv.applies(torch.cat([x, x]), w)  # on by default
            assert not gv.applies(x.float(), w.float())
            with gv.enabled(False):
                assert not gv.applies(x, w)
        with gv.enabled(True):
            assert not gv.applies(x, w)  # autograd on: training keeps the matmul


@pytest.mark.gpu
def test_linear_dispatches_decode_rows_to_the_kernel():
    """By default a bf16 Linear under no_grad gives a one-row input to the kernel (bit for bit the kernel's
    result, and the float64 product within bf16 rounding, like the matmul it replaces)."""
    from scratchlm.model.layers import Linear

    layer = Linear(2048, 6144, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, 1, 2048, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        ours = layer(x)
        with gv.enabled(False):
            matmul = layer(x)
    assert torch.equal(ours, gemv(x, layer.weight))
    assert_close_scaled(ours.double(), (x.double() @ layer.weight.double().T), "kernel", **TOLERANCES[torch.bfloat16])
    assert_close_scaled(matmul.double(), (x.double() @ layer.weight.double().T), "matmul", **TOLERANCES[torch.bfloat16])


@pytest.mark.gpu
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_decode_step_with_fused_kernels_matches_the_matmuls(tie):
    """A whole bf16 decode step (one token, a KV cache holding a prompt) with the kernel (on by default): every
    projection with its norm / gate / residual fused. Against the float64 model, its logits are as close as the
    unfused bf16 step's (within bf16 tolerance, and at most 1.5x the unfused step's largest error)."""
    import copy

    from scratchlm.inference.kv_cache import KVCache
    from scratchlm.model import ModelConfig, TransformerLM

    config = ModelConfig(vocab_size=1000, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, context_length=64,
                         tie_embeddings=tie)
    model = TransformerLM(config, device="cuda").to(torch.bfloat16).eval()
    prompt = torch.randint(0, 1000, (1, 9), device="cuda")
    logits = {}
    for name, net, on in [("float64", copy.deepcopy(model).double(), False), ("unfused", model, False),
                          ("fused", model, True)]:
        cache = KVCache(config, 1, device="cuda", dtype=next(net.parameters()).dtype)
        with torch.no_grad(), gv.enabled(on):
            net(prompt[:, :-1], torch.arange(8, device="cuda"), kv_cache=cache)
            logits[name] = net(prompt[:, -1:], torch.tensor([8], device="cuda"), kv_cache=cache).double()
    for name in ("unfused", "fused"):
        assert_close_scaled(logits[name], logits["float64"], f"{name} decode logits", **TOLERANCES[torch.bfloat16])
    errors = {name: (logits[name] - logits["float64"]).abs().max().item() for name in ("unfused", "fused")}
    assert errors["fused"] <= 1.5 * errors["unfused"], errors
