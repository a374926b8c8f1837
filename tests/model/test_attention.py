"""Attention: the mask, our softmax attention vs PyTorch's, both backends vs a float64 GQA reference,
backend selection, and CausalSelfAttention with grouped heads vs the same model with repeated heads."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from scratchlm.model import (
    ATTENTION_BACKENDS,
    CausalSelfAttention,
    ModelConfig,
    RotaryEmbedding,
    causal_mask,
    get_attention,
    naive_attention,
    scaled_dot_product_attention,
    sdpa_attention,
)
from tests.model import reference as ref
from tests.model.reference import EXACT64, FLOAT32, assert_fwd_bwd

WINDOWS = [None, 1, 3, 100]
LENGTHS = [(6, 6), (3, 8), (1, 7), (1, 1)]  # (q_len, kv_len): training, prefill after a cache, decode


@pytest.mark.parametrize("sliding_window", WINDOWS)
@pytest.mark.parametrize(("q_len", "kv_len"), LENGTHS + [(5, 12), (0, 4)])
def test_causal_mask_matches_loop(q_len, kv_len, sliding_window):
    mask = causal_mask(q_len, kv_len, sliding_window)
    assert mask.dtype == torch.bool and mask.shape == (q_len, kv_len)
    assert torch.equal(mask, ref.allowed(q_len, kv_len, sliding_window))


def test_causal_mask_values():
    assert causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    assert causal_mask(4, 4, sliding_window=2).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0],
                                                                   [0, 0, 1, 1]]


def qkv(b: int, heads: int, kv_heads: int, q_len: int, kv_len: int, hd: int, dtype=torch.float64):
    make = lambda *s: torch.randn(*s, dtype=torch.float64).to(dtype).requires_grad_()  # noqa: E731
    return make(b, heads, q_len, hd), make(b, kv_heads, kv_len, hd), make(b, kv_heads, kv_len, hd)


@pytest.mark.parametrize("mask_shape", ["none", "shared", "per-batch-head"])
def test_scaled_dot_product_attention_matches_torch(mask_shape):
    q, k, v = qkv(2, 3, 3, 5, 7, 8)
    mask = None
    if mask_shape != "none":
        shape = (5, 7) if mask_shape == "shared" else (2, 3, 5, 7)
        mask = torch.rand(shape) < 0.5
        mask[..., 0] = True  # no fully masked row
    assert_fwd_bwd(lambda: scaled_dot_product_attention(q, k, v, mask),
                   lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), [q, k, v], **EXACT64)


def test_scaled_dot_product_attention_float32():
    q, k, v = qkv(2, 2, 2, 6, 6, 16, dtype=torch.float32)
    mask = causal_mask(6, 6)
    out = scaled_dot_product_attention(q, k, v, mask)
    assert out.dtype == torch.float32
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
    torch.testing.assert_close(out.double(), expected, **FLOAT32)


@pytest.mark.parametrize("sliding_window", WINDOWS)
@pytest.mark.parametrize(("q_len", "kv_len"), LENGTHS)
@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_backends_match_float64_gqa_reference(n_kv_heads, q_len, kv_len, sliding_window):
    q, k, v = qkv(2, 4, n_kv_heads, q_len, kv_len, 8)
    expected = lambda: ref.attention(q, k, v, sliding_window)  # noqa: E731
    assert_fwd_bwd(lambda: sdpa_attention(q, k, v, sliding_window), expected, [q, k, v], **EXACT64)
    assert_fwd_bwd(lambda: naive_attention(q, k, v, sliding_window), expected, [q, k, v], **EXACT64)


@pytest.mark.parametrize("backend", sorted(ATTENTION_BACKENDS))
def test_backends_float32(backend):
    q, k, v = qkv(1, 4, 2, 5, 9, 16, dtype=torch.float32)
    out = get_attention(backend, "cpu")(q, k, v, 4)
    assert out.dtype == torch.float32 and out.shape == q.shape
    torch.testing.assert_close(out.double(), ref.attention(q.double(), k.double(), v.double(), 4), **FLOAT32)


def test_sliding_window_wider_than_sequence_is_plain_causal():
    q, k, v = qkv(1, 2, 2, 6, 6, 8)
    for fn in (naive_attention, sdpa_attention):
        torch.testing.assert_close(fn(q, k, v, 6), fn(q, k, v, None), **EXACT64)
        assert not torch.allclose(fn(q, k, v, 5), fn(q, k, v, None))


def test_get_attention():
    assert get_attention("naive", "cpu") is naive_attention
    assert get_attention("sdpa", "cpu") is sdpa_attention
    assert get_attention("auto", "cpu") is naive_attention
    # "flash", and "auto" on CUDA, depend on whether Triton is installed: tests/kernels/test_wiring.py.
    with pytest.raises(ValueError, match=r"unknown attention backend 'nope'.*naive.*sdpa"):
        get_attention("nope", "cpu")


# -- CausalSelfAttention --------------------------------------------------------------------------


def small_config(**kw) -> ModelConfig:
    base = dict(vocab_size=50, context_length=16, d_model=32, n_layers=1, n_heads=4)
    return ModelConfig(**{**base, **kw})


def attention_module(cfg: ModelConfig) -> CausalSelfAttention:
    rope = RotaryEmbedding(cfg.head_dim, cfg.context_length, cfg.rope_theta)
    module = CausalSelfAttention(cfg, rope, dtype=torch.float64)
    for norm in (module.q_norm, module.k_norm):
        if norm is not None:
            with torch.no_grad():
                norm.weight.copy_(1 + 0.3 * torch.randn_like(norm.weight))
    return module


def as_mha(gqa: CausalSelfAttention, cfg: ModelConfig) -> CausalSelfAttention:
    """The MHA module whose k/v head h is a copy of the GQA module's k/v head h // group."""
    mha_cfg = dataclasses.replace(cfg, n_kv_heads=cfg.n_heads)
    mha = attention_module(mha_cfg)
    H, K, hd = cfg.n_heads, cfg.kv_heads, cfg.head_dim
    w = gqa.qkv_proj.weight.detach()
    q, k, v = w[: H * hd], w[H * hd: (H + K) * hd], w[(H + K) * hd:]
    repeat = lambda m: m.view(K, hd, -1).repeat_interleave(H // K, dim=0).reshape(H * hd, -1)  # noqa: E731
    with torch.no_grad():
        mha.qkv_proj.weight.copy_(torch.cat((q, repeat(k), repeat(v))))
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        if cfg.qk_norm:
            mha.q_norm.weight.copy_(gqa.q_norm.weight)
            mha.k_norm.weight.copy_(gqa.k_norm.weight)
    return mha


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize(("n_kv_heads", "sliding_window"), [(1, None), (2, None), (2, 3), (4, None)])
def test_grouped_query_attention_equals_mha_with_repeated_heads(backend, qk_norm, n_kv_heads, sliding_window):
    cfg = small_config(n_kv_heads=n_kv_heads, qk_norm=qk_norm, sliding_window=sliding_window, attention=backend,
                       rope_theta=1000.0)
    gqa = attention_module(cfg)
    mha = as_mha(gqa, cfg)
    x = torch.randn(2, 9, 32, dtype=torch.float64, requires_grad=True)
    positions = torch.arange(9)
    out = gqa(x, positions)
    assert out.shape == x.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, mha(x, positions), **EXACT64)
    # Gradients of shared k/v heads are summed before RoPE's float32 backward: float32-close only.
    assert_fwd_bwd(lambda: gqa(x, positions), lambda: mha(x, positions), [x], **EXACT64)


def test_attention_module_shapes_and_init():
    cfg = small_config(n_kv_heads=2, qk_norm=True)
    module = attention_module(cfg)
    assert module.qkv_proj.weight.shape == ((4 + 2 * 2) * 8, 32)
    assert module.o_proj.weight.shape == (32, 32)
    assert module.q_norm.weight.shape == module.k_norm.weight.shape == (8,)
    assert module.qkv_proj.std == pytest.approx((2 / (32 + 32)) ** 0.5)
    assert attention_module(small_config()).q_norm is None

