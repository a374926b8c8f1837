"""Triton FlashAttention-2 and the tiled PyTorch FlashAttention-2 against a float64 softmax attention (tests/model
reference: a loop-built mask, repeated k/v heads), forward, logsumexp and backward; launcher errors.
CPU: Triton's interpreter with 32 x 16 forward tiles (16 x 32 for dK/dV), so small shapes already cross tiles."""

from __future__ import annotations

import math

import pytest
import torch

from tests.kernels.common import DEVICE, TOLERANCES, check_fwd_bwd, leaf, require_triton
from tests.model import reference as ref
from tests.model.reference import EXACT64

require_triton()

from scratchlm.kernels import flash_attention as fa  # noqa: E402
from scratchlm.kernels.flash_attention import flash_attention  # noqa: E402
from scratchlm.kernels.flash_reference import flash_attention_reference  # noqa: E402


def float64_attention(q, k, v, causal: bool):
    """Softmax attention in float64; non-causal = every key visible (a sliding window of 0 would mean none)."""
    if causal:
        return ref.attention(q, k, v)
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


def qkv(b, h, n_kv, t, s, d, dtype):
    return leaf(b, h, t, d, dtype=dtype), leaf(b, n_kv, s, d, dtype=dtype), leaf(b, n_kv, s, d, dtype=dtype)


# (batch, heads, kv heads, T, S, D): tiles cut mid-sequence, batch 1, a single head, GQA groups of 2 and 4,
# S > T (queries at the end: a cache prefix), T = 1, and both head dims.
CASES = [
    (1, 1, 1, 37, 37, 64),
    (2, 4, 2, 21, 50, 64),
    (1, 4, 1, 33, 33, 64),
    (1, 2, 2, 1, 19, 64),
    (1, 2, 1, 45, 45, 128),
]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize(("b", "h", "n_kv", "t", "s", "d"), CASES, ids=str)
def test_flash_attention_matches_float64(b, h, n_kv, t, s, d, causal):
    check_fwd_bwd(lambda q, k, v: flash_attention(q, k, v, causal), lambda q, k, v: float64_attention(q, k, v, causal),
                  qkv(b, h, n_kv, t, s, d, torch.float32), **TOLERANCES[torch.float32])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_flash_attention_half_precision(dtype):
    check_fwd_bwd(lambda q, k, v: flash_attention(q, k, v), lambda q, k, v: float64_attention(q, k, v, True),
                  qkv(1, 4, 2, 40, 40, 64, dtype), **TOLERANCES[dtype])


def test_flash_attention_saves_logsumexp():
    q, k, v = qkv(2, 2, 1, 27, 35, 64, torch.float32)
    o, lse = fa.flash_attention_forward(q, k, v, causal=True)
    scores = q.double() @ k.double().repeat_interleave(2, dim=1).transpose(-2, -1) / 8.0
    scores = scores.masked_fill(~ref.allowed(27, 35, None), float("-inf"))
    torch.testing.assert_close(lse.double(), torch.logsumexp(scores, dim=-1), rtol=1e-5, atol=1e-5)
    assert o.shape == q.shape and o.transpose(1, 2).is_contiguous()  # (B, T, H, D) memory: the model's layout


def test_flash_attention_strided_inputs_like_the_model():
    """q, k, v as the model makes them: (B, T, H, D) slices of one fused projection, viewed as (B, H, T, D)."""
    b, t, h, d = 2, 20, 2, 64
    qkv_rows = torch.randn(b, t, 3 * h * d, device=DEVICE)
    q, k, v = (x.view(b, t, h, d).transpose(1, 2) for x in qkv_rows.split(h * d, dim=-1))
    assert not q.is_contiguous()
    expected = flash_attention(q.contiguous(), k.contiguous(), v.contiguous())
    torch.testing.assert_close(flash_attention(q, k, v), expected, rtol=0, atol=0)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize(("b", "h", "n_kv", "t", "s", "d", "block_m", "block_n"), [
    (2, 4, 2, 13, 19, 8, 4, 5),
    (1, 3, 1, 16, 16, 4, 8, 8),
    (1, 1, 1, 1, 6, 4, 4, 4),
], ids=str)
def test_tiled_reference_matches_float64(b, h, n_kv, t, s, d, block_m, block_n, causal):
    check_fwd_bwd(lambda q, k, v: flash_attention_reference(q, k, v, causal, block_m, block_n),
                  lambda q, k, v: float64_attention(q, k, v, causal), qkv(b, h, n_kv, t, s, d, torch.float64),
                  **EXACT64)


def test_tiled_reference_float32():
    check_fwd_bwd(lambda q, k, v: flash_attention_reference(q, k, v, True, 16, 8),
                  lambda q, k, v: float64_attention(q, k, v, True), qkv(1, 2, 1, 30, 41, 16, torch.float32),
                  **TOLERANCES[torch.float32])


def bad(shape_q=(1, 2, 8, 64), shape_kv=(1, 2, 8, 64), dtype=torch.float32, kv_dtype=None):
    q = torch.randn(shape_q, device=DEVICE).to(dtype)
    k = torch.randn(shape_kv, device=DEVICE).to(kv_dtype or dtype)
    return q, k, k.clone()


@pytest.mark.parametrize(("inputs", "match"), [
    (bad((2, 8, 64), (2, 8, 64)), r"q \(B, H, T, D\) and k, v"),
    (bad(kv_dtype=torch.float16), "share one dtype"),
    (bad(dtype=torch.float64), "float16, bfloat16 or float32"),
    (bad((1, 2, 8, 32), (1, 2, 8, 32)), r"head dims \(64, 128\), got 32"),
    (bad((1, 2, 8, 64), (1, 2, 8, 128)), "k and v must both be"),
    (bad((1, 3, 8, 64), (1, 2, 8, 64)), r"multiple of kv heads"),
    (bad((1, 2, 8, 64), (1, 2, 5, 64)), "S >= T"),
])
def test_launcher_rejects_bad_inputs(inputs, match):
    with pytest.raises(ValueError, match=match):
        flash_attention(*inputs)


def test_mismatched_k_v_shapes_are_rejected():
    q, k, _ = bad()
    with pytest.raises(ValueError, match="k and v must both be"):
        flash_attention(q, k, k[:, :, :4])


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setattr(fa, "INTERPRETED", False)
    with pytest.raises(ValueError, match="need CUDA tensors.*TRITON_INTERPRET=1"):
        flash_attention(*bad())


# -- GPU: real shapes ------------------------------------------------------------------------------

GPU_CASES = [(2, 8, 8, 1024, 1024, 64), (1, 16, 4, 4096, 4096, 64), (1, 8, 2, 2048, 2048, 128),
             (1, 4, 4, 4096, 4096, 128), (3, 6, 2, 1000, 1537, 64)]


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize(("b", "h", "n_kv", "t", "s", "d"), GPU_CASES, ids=str)
def test_flash_attention_gpu_bf16(b, h, n_kv, t, s, d, causal):
    check_fwd_bwd(lambda q, k, v: flash_attention(q, k, v, causal), lambda q, k, v: float64_attention(q, k, v, causal),
                  qkv(b, h, n_kv, t, s, d, torch.bfloat16), **TOLERANCES[torch.bfloat16])


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
def test_flash_attention_gpu_float32_is_float32_accurate(d):
    """float32 inputs run 3xTF32 dots (not plain TF32): float32 tolerances hold at a real length."""
    check_fwd_bwd(lambda q, k, v: flash_attention(q, k, v), lambda q, k, v: float64_attention(q, k, v, True),
                  qkv(1, 2, 1, 777, 777, d, torch.float32), **TOLERANCES[torch.float32])


@pytest.mark.gpu
def test_flash_attention_gpu_matches_sdpa_and_compiles():
    q, k, v = qkv(2, 8, 8, 2048, 2048, 64, torch.bfloat16)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(flash_attention(q, k, v), expected, rtol=2e-2, atol=2e-2)
    compiled = torch.compile(lambda q, k, v: flash_attention(q, k, v).float().square().sum(), fullgraph=True)
    loss = compiled(q, k, v)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(x.grad).all() for x in (q, k, v))


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("index", range(5))
def test_every_candidate_tile(monkeypatch, d, index):
    """Tuning only ever runs the tile it finds fastest for a shape: pin each candidate in turn (sequence lengths
    off the tile grid, GQA, causal with S > T) so a masking bug in any of them fails here."""
    monkeypatch.setattr(fa, "PIN", index)
    for kernel in (fa._attn_fwd_kernel, fa._attn_bwd_dkdv_kernel, fa._attn_bwd_dq_kernel):
        monkeypatch.setattr(kernel, "cache", {})  # forget the tile chosen for earlier keys
    check_fwd_bwd(lambda q, k, v: flash_attention(q, k, v, True), lambda q, k, v: float64_attention(q, k, v, True),
                  qkv(1, 4, 2, 333, 517, d, torch.bfloat16), **TOLERANCES[torch.bfloat16])


def test_pinned_candidates_pick_one_tile_per_launch(monkeypatch):
    fwd = fa.FWD_TILES
    assert fa.candidates(fwd, (1, 1, 1, 1), 64, torch.bfloat16) == (fwd[64] if fa.PIN is None else [fwd[64][fa.PIN]])
    monkeypatch.setattr(fa, "PIN", 7)
    assert fa.candidates(fwd, (1, 1, 1, 1), 128, torch.bfloat16) == [fwd[128][7 % len(fwd[128])]]
    assert fa.candidates(fwd, (1, 1, 1, 1), 128, torch.float32) == [(1, 1, 1, 1)]
