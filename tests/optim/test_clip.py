"""Global gradient-norm clipping against torch.nn.utils.clip_grad_norm_."""

from __future__ import annotations

import pytest
import torch

from scratchlm.optim import clip_grad_norm_

SHAPES = [(7, 5), (5,), (3, 4, 2), (1,), (6, 6)]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def params_with_grads(seed: int, device: str = "cpu") -> list[torch.Tensor]:
    """Parameters of mixed shapes; the 2nd and 4th have no gradient."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(shape, generator=gen).to(device).requires_grad_() for shape in SHAPES]
    for i, p in enumerate(params):
        p.grad = None if i in (1, 3) else torch.randn(p.shape, generator=gen).to(device)
    return params


def clone(params: list[torch.Tensor]) -> list[torch.Tensor]:
    copies = [p.detach().clone().requires_grad_() for p in params]
    for c, p in zip(copies, params):
        c.grad = None if p.grad is None else p.grad.clone()
    return copies


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_norm", [0.5, 1e6])  # below the norm (clips) and above it (leaves grads alone)
def test_matches_torch(max_norm: float, device: str) -> None:
    ours = params_with_grads(0, device)
    theirs = clone(ours)
    grads_before = [None if p.grad is None else p.grad.clone() for p in ours]
    total = clip_grad_norm_(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert total.shape == () and total.dtype == torch.float32 and total.device.type == device
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)
    for a, b in zip(ours, theirs):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)
    if max_norm > total:
        assert all(g is None or torch.equal(p.grad, g) for p, g in zip(ours, grads_before))


def test_clipped_norm_equals_max_norm() -> None:
    params = params_with_grads(1)
    clip_grad_norm_(params, 0.25)
    assert clip_grad_norm_(params, 1e6).item() == pytest.approx(0.25, rel=1e-5)


def test_tied_parameter_counts_once() -> None:
    params = params_with_grads(2)
    once = clip_grad_norm_(clone(params), 1e6)
    tied = clone(params)
    torch.testing.assert_close(clip_grad_norm_(tied + [tied[0]], 1e6), once)  # tied[0] listed twice


def test_bfloat16_grads_norm_in_float32() -> None:
    p = torch.zeros(1000, dtype=torch.bfloat16, requires_grad=True)
    p.grad = torch.full((1000,), 3.0, dtype=torch.bfloat16)
    total = clip_grad_norm_([p], 1.0)
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx(3.0 * 1000**0.5, rel=1e-6)
    assert p.grad.dtype == torch.bfloat16


def test_single_tensor_and_no_grads() -> None:
    p = torch.ones(3, requires_grad=True)
    assert clip_grad_norm_(p, 1.0).item() == 0.0
    p.grad = torch.full((3,), 2.0)
    assert clip_grad_norm_(p, 1.0).item() == pytest.approx(12**0.5)
