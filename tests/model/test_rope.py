"""RotaryEmbedding against the complex-number formula: any positions, any theta, relative positions only."""

from __future__ import annotations

import pytest
import torch

from scratchlm.model import RotaryEmbedding
from tests.model import reference as ref
from tests.model.reference import EXACT64, FLOAT32, assert_fwd_bwd

MAX_LEN = 64


def positions_case(kind: str, batch: int, seq: int) -> torch.Tensor:
    if kind == "default":
        return torch.arange(seq)
    if kind == "offset":
        return torch.arange(seq) + 37
    if kind == "scattered":  # non-contiguous, unsorted, repeated
        return torch.randint(0, MAX_LEN, (seq,))
    if kind == "batched":  # (batch, seq): each row its own positions
        return torch.stack([torch.randperm(MAX_LEN)[:seq] for _ in range(batch)])
    raise ValueError(kind)


@pytest.mark.parametrize("theta", [10_000.0, 500.0, 1e6])
@pytest.mark.parametrize("kind", ["default", "offset", "scattered", "batched"])
@pytest.mark.parametrize("head_dim", [2, 8, 32])
def test_rope_matches_complex_formula(theta, kind, head_dim):
    rope = RotaryEmbedding(head_dim, MAX_LEN, theta=theta)
    batch, heads, seq = 3, 2, 11
    positions = positions_case(kind, batch, seq)
    x = torch.randn(batch, heads, seq, head_dim, dtype=torch.float64, requires_grad=True)
    out = rope(x, positions)
    assert out.shape == x.shape and out.dtype == torch.float64
    assert_fwd_bwd(lambda: rope(x, positions), lambda: ref.rope(x, positions, theta), [x], **EXACT64)


@pytest.mark.parametrize("kind", ["scattered", "batched"])
def test_rope_float32_and_bf16(kind):
    rope = RotaryEmbedding(16, MAX_LEN, theta=2_000.0)
    positions = positions_case(kind, 2, 9)
    x = torch.randn(2, 4, 9, 16)
    expected = ref.rope(x.double(), positions, 2_000.0)
    out = rope(x, positions)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, **FLOAT32)
    out16 = rope(x.to(torch.bfloat16), positions)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.double(), expected, rtol=2e-2, atol=2e-2)


def test_rope_preserves_norms_and_position_zero_is_identity():
    rope = RotaryEmbedding(16, MAX_LEN)
    x = torch.randn(2, 3, 10, 16, dtype=torch.float64)
    out = rope(x, torch.arange(10))
    pairs = lambda t: t[..., :8] ** 2 + t[..., 8:] ** 2  # noqa: E731 - each rotated pair keeps its length
    torch.testing.assert_close(pairs(out), pairs(x), **EXACT64)
    torch.testing.assert_close(out[:, :, 0], x[:, :, 0], **EXACT64)


def test_rope_scores_depend_only_on_relative_position():
    """q at position m, k at position n: <R_m q, R_n k> is a function of m - n alone."""
    rope = RotaryEmbedding(32, MAX_LEN, theta=300.0)
    q = torch.randn(1, 1, 1, 32, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 32, dtype=torch.float64)

    def score(m: int, n: int) -> torch.Tensor:
        return (rope(q, torch.tensor([m])) * rope(k, torch.tensor([n]))).sum()

    for delta in (0, 1, 5, 20):
        scores = torch.stack([score(n + delta, n) for n in (0, 3, 17, MAX_LEN - 1 - delta)])
        torch.testing.assert_close(scores, scores[:1].expand(4), **EXACT64)
    assert not torch.allclose(score(5, 0), score(6, 0))  # and it does depend on it


def test_rope_tables_and_errors():
    rope = RotaryEmbedding(8, 16, theta=100.0)
    assert rope.cos.shape == rope.sin.shape == (16, 4) and rope.cos.dtype == torch.float64
    angles = torch.arange(16, dtype=torch.float64)[:, None] * 100.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    torch.testing.assert_close(rope.cos.double(), angles.cos(), rtol=0, atol=1e-7)
    torch.testing.assert_close(rope.sin.double(), angles.sin(), rtol=0, atol=1e-7)
    assert "cos" not in rope.state_dict()  # derived, not saved
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(7, 16)
    with pytest.raises(IndexError):
        rope(torch.randn(1, 1, 1, 8), torch.tensor([16]))  # past the table


def test_rope_init_weights_after_meta():
    rope = RotaryEmbedding(8, 32, theta=50.0, device="meta")
    rope = rope.to_empty(device="cpu")
    rope.init_weights()
    fresh = RotaryEmbedding(8, 32, theta=50.0)
    assert torch.equal(rope.cos, fresh.cos) and torch.equal(rope.sin, fresh.sin)


def test_tables_stay_float64_when_the_module_changes_dtype():
    rope = RotaryEmbedding(8, 16).to(torch.bfloat16)
    assert rope.cos.dtype == torch.float64
    x = torch.randn(1, 2, 16, 8, dtype=torch.bfloat16)
    out = rope(x, torch.arange(16))
    assert out.dtype == torch.bfloat16
    expected = RotaryEmbedding(8, 16)(x.float(), torch.arange(16))
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)
