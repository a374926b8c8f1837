"""Linear, Embedding, RMSNorm, SwiGLU, silu and softmax against PyTorch and float64 formulas, forward and backward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scratchlm.model import Embedding, Linear, RMSNorm, SwiGLU, TransformerLM, silu, softmax
from scratchlm.model.config import ModelConfig
from tests.model import reference as ref
from tests.model.reference import EXACT64, FLOAT32, assert_fwd_bwd

BATCH_SHAPES = [(7,), (3, 5), (2, 3, 4)]

# N(0, 1) truncated to [-3, 3]: std and the share of values beyond 2.
_Z = 1 - 2 * (1 - 0.5 * math.erfc(-3 / math.sqrt(2)))  # P(|z| <= 3)
TRUNC_STD = math.sqrt(1 - 2 * 3 * math.exp(-4.5) / math.sqrt(2 * math.pi) / _Z)
TRUNC_BEYOND_2 = (math.erfc(2 / math.sqrt(2)) - math.erfc(3 / math.sqrt(2))) / _Z


def leaf(shape, dtype=torch.float64, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, dtype=torch.float64) * scale).to(dtype).requires_grad_()


# -- Linear ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", BATCH_SHAPES, ids=str)
def test_linear_matches_f_linear_and_matmul(shape):
    lin = Linear(6, 10, dtype=torch.float64)
    x = leaf((*shape[:-1], 6) if len(shape) > 1 else (6,))
    assert_fwd_bwd(lambda: lin(x), lambda: F.linear(x, lin.weight), [x, lin.weight], **EXACT64)
    assert_fwd_bwd(lambda: lin(x), lambda: x @ lin.weight.T, [x, lin.weight], **EXACT64)
    assert lin.weight.shape == (10, 6) and lin(x).shape == (*x.shape[:-1], 10)


def test_linear_float32_against_float64():
    lin = Linear(24, 16)
    x = torch.randn(4, 5, 24)
    assert lin.weight.dtype == torch.float32
    torch.testing.assert_close(lin(x).double(), x.double() @ lin.weight.double().T, **FLOAT32)


def test_linear_options_match_the_separate_operations():
    """norm before, gated input, residual after, and gate_output (SwiGLU's gate on the product), float64, forward
    and backward; gate_output with a residual is refused."""
    from scratchlm.model.layers import linear

    lin, norm = Linear(6, 10, dtype=torch.float64), RMSNorm(6, dtype=torch.float64)
    x, x2, r = leaf((3, 6)), leaf((3, 12)), leaf((3, 10))

    def swiglu64(t):
        gate, up = t.chunk(2, dim=-1)
        return gate * torch.sigmoid(gate) * up

    assert_fwd_bwd(lambda: linear(x, lin.weight, norm=norm, residual=r),
                   lambda: r + ref.rms_norm(x, norm.weight, norm.eps) @ lin.weight.T, [x, r, lin.weight], **EXACT64)
    assert_fwd_bwd(lambda: linear(x2, lin.weight, gated=True), lambda: swiglu64(x2) @ lin.weight.T,
                   [x2, lin.weight], **EXACT64)
    assert_fwd_bwd(lambda: linear(x, lin.weight, gate_output=True), lambda: swiglu64(x @ lin.weight.T),
                   [x, lin.weight], **EXACT64)
    with pytest.raises(ValueError, match="no residual"):
        linear(x, lin.weight, residual=r, gate_output=True)


def _trunc_std_cases():
    return [
        pytest.param(lambda: Linear(1024, 2048).weight, math.sqrt(2 / 3072), id="linear-default"),
        pytest.param(lambda: Linear(1024, 2048, std=0.02).weight, 0.02, id="linear-std"),
        pytest.param(lambda: Embedding(4096, 512).weight, 1.0, id="embedding"),
        pytest.param(lambda: SwiGLU(1024, 2048).gate_up_proj.weight, math.sqrt(2 / 3072), id="swiglu-gate-up"),
        pytest.param(lambda: SwiGLU(1024, 2048).down_proj.weight, math.sqrt(2 / 3072), id="swiglu-down"),
        pytest.param(lambda: TransformerLM(ModelConfig(vocab_size=4096, d_model=512, n_layers=1, n_heads=8,
                                                       tie_embeddings=True)).embed.weight,
                     512 ** -0.5, id="tied-embedding"),
    ]


@pytest.mark.parametrize(("make", "std"), _trunc_std_cases())
def test_init_is_normal_truncated_at_3_std(make, std):
    """Moments of a 2M+ entry matrix: std of N(0, s^2) cut at +-3s is 0.9866 s; nothing beyond 3s."""
    w = make().detach().double().flatten()
    n = w.numel()
    assert n >= 2_000_000
    assert abs(w.mean().item()) < 5 * std / math.sqrt(n)
    assert w.std().item() == pytest.approx(std * TRUNC_STD, rel=3e-3)
    assert w.abs().max().item() <= 3 * std * (1 + 1e-6)
    assert w.abs().max().item() > 2.9 * std  # truncated at 3, not lower
    assert (w.abs() > 2 * std).double().mean().item() == pytest.approx(TRUNC_BEYOND_2, rel=0.03)


def test_init_weights_redraws():
    lin = Linear(64, 64)
    before = lin.weight.detach().clone()
    lin.init_weights()
    assert not torch.equal(before, lin.weight)


# -- Embedding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_embedding_matches_f_embedding_with_repeated_ids(dtype):
    emb = Embedding(11, 6, dtype=dtype)
    ids = torch.tensor([[3, 3, 0, 10, 3], [10, 1, 1, 3, 7]])  # repeats: gradients must accumulate
    assert_fwd_bwd(lambda: emb(ids), lambda: F.embedding(ids, emb.weight), [emb.weight], rtol=0, atol=0)
    grad = torch.autograd.grad(emb(ids).sum(), emb.weight)[0]
    counts = torch.bincount(ids.flatten(), minlength=11).to(dtype)
    torch.testing.assert_close(grad, counts[:, None].expand(11, 6), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(), (4,), (2, 3, 4)], ids=str)
def test_embedding_any_index_shape(shape):
    emb = Embedding(9, 5, dtype=torch.float64)
    ids = torch.randint(0, 9, shape)
    torch.testing.assert_close(emb(ids), F.embedding(ids, emb.weight), rtol=0, atol=0)


# -- RMSNorm --------------------------------------------------------------------------------------


def random_norm(d: int, eps: float = 1e-5, dtype=torch.float64) -> RMSNorm:
    norm = RMSNorm(d, eps=eps, dtype=dtype)
    assert torch.equal(norm.weight, torch.ones(d, dtype=dtype))  # initialised to ones
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(d))
    return norm


@pytest.mark.parametrize("shape", BATCH_SHAPES, ids=str)
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_rmsnorm_matches_formula_and_f_rms_norm(shape, eps):
    d = shape[-1] * 4
    norm = random_norm(d, eps)
    x = leaf((*shape[:-1], d), scale=3.0)
    assert_fwd_bwd(lambda: norm(x), lambda: ref.rms_norm(x, norm.weight, eps), [x, norm.weight], **EXACT64)
    assert_fwd_bwd(lambda: norm(x), lambda: F.rms_norm(x, (d,), norm.weight, eps), [x, norm.weight], **EXACT64)


def test_rmsnorm_float32_and_tiny_inputs():
    norm = random_norm(32, dtype=torch.float32)
    x = torch.randn(4, 32) * torch.tensor([1e-3, 1.0, 1e3, 0.0])[:, None]  # last row: all zeros -> zeros
    out = norm(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref.rms_norm(x.double(), norm.weight.double(), 1e-5), **FLOAT32)
    assert torch.equal(out[3], torch.zeros(32))


def test_rmsnorm_bf16_returns_bf16_of_the_float32_computation():
    norm = random_norm(64, dtype=torch.bfloat16)
    x = (torch.randn(8, 64) * 20).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    expected = F.rms_norm(x.float(), (64,), norm.weight.float(), 1e-5).to(torch.bfloat16)
    # Same float32 value up to the order of a sum, so equal after rounding except at rare ties.
    assert (out == expected).double().mean().item() > 0.99
    torch.testing.assert_close(out, expected, rtol=2**-7, atol=0)
    naive_bf16 = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    assert not torch.equal(out, naive_bf16)  # really computed in float32, not in bf16


# -- SwiGLU and silu ------------------------------------------------------------------------------


@pytest.mark.parametrize(("d_model", "d_ff"), [(8, 16), (12, 20), (16, 64)])
def test_swiglu_matches_separate_gate_up_down(d_model, d_ff):
    ffn = SwiGLU(d_model, d_ff, dtype=torch.float64)
    assert ffn.gate_up_proj.weight.shape == (2 * d_ff, d_model) and ffn.down_proj.weight.shape == (d_model, d_ff)
    x = leaf((2, 5, d_model))
    leaves = [x, ffn.gate_up_proj.weight, ffn.down_proj.weight]
    assert_fwd_bwd(lambda: ffn(x), lambda: ref.swiglu(x, ffn.gate_up_proj.weight, ffn.down_proj.weight),
                   leaves, **EXACT64)

    def with_f_silu():
        w = ffn.gate_up_proj.weight
        return (F.silu(F.linear(x, w[:d_ff])) * F.linear(x, w[d_ff:])) @ ffn.down_proj.weight.T

    assert_fwd_bwd(lambda: ffn(x), with_f_silu, leaves, **EXACT64)


def test_swiglu_float32():
    ffn = SwiGLU(16, 48)
    x = torch.randn(3, 16)
    expected = ref.swiglu(x.double(), ffn.gate_up_proj.weight.double(), ffn.down_proj.weight.double())
    torch.testing.assert_close(ffn(x).double(), expected, **FLOAT32)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1000.0])
def test_silu_matches_f_silu(scale):
    x = leaf((50,), scale=scale)
    assert_fwd_bwd(lambda: silu(x), lambda: F.silu(x), [x], **EXACT64)
    assert torch.isfinite(silu(x)).all()


# -- softmax --------------------------------------------------------------------------------------


def softmax_inputs(kind: str) -> torch.Tensor:
    x = torch.randn(4, 6, 9, dtype=torch.float64)
    if kind == "huge":
        x = x * 1000  # exp overflows without the max shift
    elif kind == "neg-inf":
        x = x.masked_fill(torch.rand(x.shape) < 0.5, float("-inf"))
        x[..., 0] = torch.randn(4, 6, dtype=torch.float64)  # every row keeps a finite entry
    elif kind == "shifted":
        x = x + 1e4
    return x


@pytest.mark.parametrize("kind", ["normal", "huge", "neg-inf", "shifted"])
@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_softmax_matches_torch(kind, dim):
    x = softmax_inputs(kind)
    if kind == "neg-inf" and dim != -1:
        x = x.transpose(dim, -1).contiguous()  # keep the finite entry in the reduced dimension
    x.requires_grad_()
    assert_fwd_bwd(lambda: softmax(x, dim), lambda: torch.softmax(x, dim), [x], **EXACT64)
    out = softmax(x, dim)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(dim), torch.ones_like(out.sum(dim)), **EXACT64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_low_precision(dtype):
    x = (torch.randn(5, 33) * 100).to(dtype)
    out = softmax(x)
    assert out.dtype == dtype
    tol = FLOAT32 if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(out.double(), torch.softmax(x.double(), -1), **tol)


def test_fused_layers_tag_their_row_splits_through_meta_init():
    from scratchlm.model import ModelConfig, TransformerLM

    model = TransformerLM(ModelConfig(vocab_size=50, d_model=32, n_heads=4, n_kv_heads=2, n_layers=1, context_length=8),
                          device="meta")
    model.to_empty(device="cpu")
    model.init_weights()
    model.to(torch.float64)
    assert model.layers[0].attn.qkv_proj.weight.row_splits == (32, 16, 16)
    assert model.layers[0].ffn.gate_up_proj.weight.row_splits == (model.config.ffn_dim, model.config.ffn_dim)
    with pytest.raises(ValueError, match="add up"):
        Linear(4, 6, row_splits=(3, 2))
