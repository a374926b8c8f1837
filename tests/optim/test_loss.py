"""Cross-entropy, z-loss and eval metrics against torch's float64 cross-entropy and direct formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scratchlm.optim import bits_per_byte, cross_entropy, perplexity, token_losses

VOCAB = 50
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def random_batch(
    seed: int, scale: float = 1.0, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (2, 7, VOCAB) and targets (2, 7), a few of them ignored (-100)."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, 7, VOCAB, generator=gen) * scale).to(dtype)
    targets = torch.randint(0, VOCAB, (2, 7), generator=gen)
    targets[0, :3] = -100
    targets[1, -1] = -100
    return logits.to(device), targets.to(device)


def reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """torch's cross-entropy in float64 on the same values."""
    return F.cross_entropy(logits.double().flatten(0, -2), targets.flatten(), ignore_index=-100)


@pytest.mark.parametrize("device", DEVICES)
def test_forward_and_backward_match_torch(device: str) -> None:
    logits, targets = random_batch(0, device=device)
    ours_in = logits.clone().requires_grad_()
    ref_in = logits.double().requires_grad_()
    loss = cross_entropy(ours_in, targets)
    expected = reference(ref_in, targets)
    assert loss.shape == () and loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(ours_in.grad.double(), ref_in.grad, rtol=1e-5, atol=1e-7)
    assert ours_in.grad[0, :3].abs().max() == 0  # ignored positions get no gradient


def test_without_ignored_positions() -> None:
    gen = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(9, VOCAB, generator=gen), torch.randint(0, VOCAB, (9,), generator=gen)
    torch.testing.assert_close(cross_entropy(logits, targets).double(), F.cross_entropy(logits.double(), targets), rtol=1e-6, atol=1e-6)


def test_custom_ignore_index() -> None:
    logits, targets = random_batch(2)
    targets = torch.where(targets == -100, 0, targets)
    expected = F.cross_entropy(logits.double().flatten(0, -2), targets.flatten(), ignore_index=0)
    torch.testing.assert_close(cross_entropy(logits, targets, ignore_index=0).double(), expected, rtol=1e-6, atol=1e-6)


def test_huge_logits_stay_finite_and_exact() -> None:
    logits, targets = random_batch(3, scale=1000.0)
    ours_in = logits.clone().requires_grad_()
    loss = cross_entropy(ours_in, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(ours_in.grad).all()
    # float32 rounding of values ~3000: about 3000 * 6e-8 absolute per position
    torch.testing.assert_close(loss.double(), reference(logits, targets), rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_logits_are_upcast(device: str) -> None:
    logits, targets = random_batch(4, dtype=torch.bfloat16, device=device)
    ours_in = logits.clone().requires_grad_()
    loss = cross_entropy(ours_in, targets)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), reference(logits, targets), rtol=1e-6, atol=1e-6)
    loss.backward()
    assert ours_in.grad.dtype == torch.bfloat16


def test_z_loss_matches_direct_formula() -> None:
    logits, targets = random_batch(5, scale=3.0)
    keep = targets != -100
    lse = torch.logsumexp(logits.double(), dim=-1)[keep]
    expected = reference(logits, targets) + 1e-2 * (lse**2).mean()
    ours_in = logits.clone().requires_grad_()
    ref_in = logits.double().requires_grad_()
    loss = cross_entropy(ours_in, targets, z_loss_weight=1e-2)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)
    loss.backward()
    (reference(ref_in, targets) + 1e-2 * (torch.logsumexp(ref_in, dim=-1)[keep] ** 2).mean()).backward()
    torch.testing.assert_close(ours_in.grad.double(), ref_in.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.gpu
def test_compiled_matches_eager_on_cuda() -> None:
    logits, targets = random_batch(7, device="cuda")
    compiled = torch.compile(cross_entropy, fullgraph=True)
    eager_in, compiled_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    eager, out = cross_entropy(eager_in, targets, z_loss_weight=1e-4), compiled(compiled_in, targets, z_loss_weight=1e-4)
    torch.testing.assert_close(out, eager)
    eager.backward()
    out.backward()
    torch.testing.assert_close(compiled_in.grad, eager_in.grad)


def test_all_ignored_gives_zero_not_nan() -> None:
    logits = torch.randn(3, VOCAB, requires_grad=True)
    loss = cross_entropy(logits, torch.full((3,), -100))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.abs().max() == 0


def test_token_losses_per_position() -> None:
    logits, targets = random_batch(6)
    losses = token_losses(logits, targets)
    assert losses.shape == targets.shape and losses.dtype == torch.float32
    expected = F.cross_entropy(logits.double().flatten(0, -2), targets.flatten(), reduction="none").view_as(targets)
    torch.testing.assert_close(losses.double(), expected, rtol=1e-6, atol=1e-6)
    keep = targets != -100
    torch.testing.assert_close(losses[keep].mean(), cross_entropy(logits, targets))


def test_metrics() -> None:
    assert perplexity(math.log(42.0)) == pytest.approx(42.0)
    assert perplexity(1e6) == math.inf
    assert bits_per_byte(math.log(2) * 300, 100) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)
