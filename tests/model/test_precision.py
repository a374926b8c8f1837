"""float64 modules must compute in float64.

RMSNorm, RotaryEmbedding and scaled_dot_product_attention upcast half types to float32; a float64 input must
not be cast DOWN by that upcast (a regression once: `x.float()`), or float64 gradient checks lose their
point (errors ~1e-7 instead of ~1e-16). RoPE tables are kept in float64 for the same reason.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scratchlm.model import ModelConfig, RMSNorm, RotaryEmbedding, TransformerLM, scaled_dot_product_attention
from tests.model import reference as ref
from tests.model.reference import EXACT64, assert_fwd_bwd


def rmsnorm_case():
    norm = RMSNorm(16, dtype=torch.float64)
    x = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    return (lambda: norm(x)), (lambda: ref.rms_norm(x, norm.weight, norm.eps)), [x, norm.weight]


def rope_case():
    rope = RotaryEmbedding(16, 32, theta=1000.0)
    x = torch.randn(2, 3, 8, 16, dtype=torch.float64, requires_grad=True)
    positions = torch.randint(0, 32, (8,))
    return (lambda: rope(x, positions)), (lambda: ref.rope(x, positions, 1000.0)), [x]


def attention_case():
    q, k, v = (torch.randn(2, 3, 6, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = ref.allowed(6, 6, None)
    return (lambda: scaled_dot_product_attention(q, k, v, mask)), \
        (lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)), [q, k, v]


def model_case(backend: str):
    cfg = ModelConfig(vocab_size=37, context_length=8, d_model=16, n_layers=1, n_heads=2, qk_norm=True,
                      attention=backend)  # even PyTorch's attention (sdpa) cannot help: RoPE and RMSNorm cast down
    model = TransformerLM(cfg, dtype=torch.float64)
    params = dict(model.named_parameters())
    ids = torch.randint(0, 37, (2, 8))
    return (lambda: model(ids)), (lambda: ref.transformer_lm(params, cfg, ids)), list(params.values())


@pytest.mark.parametrize("case", [rmsnorm_case, rope_case, attention_case, lambda: model_case("naive"),
                                  lambda: model_case("sdpa")],
                         ids=["rmsnorm", "rope", "scaled_dot_product_attention", "transformer_lm-naive",
                              "transformer_lm-sdpa"])
def test_float64_is_computed_in_float64(case):
    ours, expected, leaves = case()
    assert_fwd_bwd(ours, expected, leaves, **EXACT64)


def test_gradcheck_rmsnorm_float64():
    norm = RMSNorm(6, dtype=torch.float64)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: torch.func.functional_call(norm, {"weight": w}, (x,)),
                                    (x, norm.weight), eps=1e-6, atol=1e-8, rtol=1e-6)
