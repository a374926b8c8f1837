"""Newton-Schulz orthogonalization against the SVD, and Muon on a least-squares problem."""

from __future__ import annotations

import copy

import pytest
import torch

from scratchlm.optim import Muon, zeropower_via_newtonschulz

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (32, 256), (3, 48, 80)])
def test_newtonschulz_approximates_u_vt(shape: tuple[int, ...], device: str) -> None:
    # Rectangular on purpose: a random square matrix has singular values near 0 that 5 iterations cannot lift.
    G = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    X = zeropower_via_newtonschulz(G)  # computed in bfloat16 on CUDA
    assert X.shape == G.shape and X.dtype == G.dtype
    singular_values = torch.linalg.svdvals(X)
    assert singular_values.min() > 0.5 and singular_values.max() < 1.5
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    direction = U @ Vh  # the exact orthogonalization
    cosine = (X * direction).sum() / (X.norm() * direction.norm())
    assert cosine > 0.9


def test_newtonschulz_keeps_input_dtype() -> None:
    G = torch.randn(8, 16, generator=torch.Generator().manual_seed(1), dtype=torch.bfloat16)
    assert zeropower_via_newtonschulz(G).dtype == torch.bfloat16


def least_squares(seed: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (256, 32) and targets (256, 16) of a random linear map."""
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(256, 32, generator=gen).to(device)
    true_weight = torch.randn(16, 32, generator=gen).to(device) / 32**0.5
    return inputs, inputs @ true_weight.T


def train(weight: torch.Tensor, opt: torch.optim.Optimizer, data: tuple[torch.Tensor, torch.Tensor], steps: int) -> float:
    inputs, targets = data
    for _ in range(steps):
        opt.zero_grad()
        loss = ((inputs @ weight.T - targets) ** 2).mean()
        loss.backward()
        opt.step()
    return ((inputs @ weight.T - targets) ** 2).mean().item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_reduces_least_squares_loss(nesterov: bool, device: str) -> None:
    data = least_squares(2, device)
    weight = torch.zeros(16, 32, device=device, requires_grad=True)
    initial = ((data[0] @ weight.T - data[1]) ** 2).mean().item()
    final = train(weight, Muon([weight], lr=0.02, nesterov=nesterov), data, 50)
    assert final < 0.2 * initial


def test_muon_state_dict_resume_equals_uninterrupted() -> None:
    data = least_squares(3)
    straight = torch.zeros(16, 32, requires_grad=True)
    train(straight, Muon([straight], weight_decay=0.1), data, 20)

    first = torch.zeros(16, 32, requires_grad=True)
    opt = Muon([first], weight_decay=0.1)
    train(first, opt, data, 10)
    resumed = first.detach().clone().requires_grad_()
    opt2 = Muon([resumed], lr=1.0)  # hyperparameters come back from the state_dict
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    train(resumed, opt2, data, 10)
    assert torch.equal(resumed, straight)
    assert set(opt2.state[resumed]) == {"momentum_buffer"}


@pytest.mark.gpu
def test_newtonschulz_compiles_on_cuda() -> None:
    G = torch.randn(3, 64, 96, generator=torch.Generator().manual_seed(6)).to("cuda")
    compiled = torch.compile(zeropower_via_newtonschulz, fullgraph=True)
    torch.testing.assert_close(compiled(G), zeropower_via_newtonschulz(G), rtol=0.05, atol=0.02)  # bf16 math


def test_tall_matrix_update_is_scaled() -> None:
    # With zero momentum history and no nesterov, the update is NS(grad) * sqrt(rows / cols).
    weight = torch.zeros(64, 16, requires_grad=True)
    weight.grad = torch.randn(64, 16, generator=torch.Generator().manual_seed(4))
    Muon([weight], lr=0.1, momentum=0.0, nesterov=False).step()
    expected = -0.1 * 2.0 * zeropower_via_newtonschulz(weight.grad)
    torch.testing.assert_close(weight.detach(), expected)


def test_rejects_non_matrices() -> None:
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.zeros(3, requires_grad=True)])
    opt = Muon([torch.zeros(3, 3, requires_grad=True)])
    with pytest.raises(ValueError, match="2-D"):
        opt.add_param_group({"params": [torch.zeros(2, 2, 2, requires_grad=True)]})


def test_param_without_grad_is_untouched() -> None:
    a, b = torch.ones(4, 4, requires_grad=True), torch.ones(4, 4, requires_grad=True)
    a.grad = torch.randn(4, 4, generator=torch.Generator().manual_seed(5))
    opt = Muon([a, b])
    opt.step()
    assert torch.equal(b, torch.ones(4, 4)) and b not in opt.state
    assert not torch.equal(a, torch.ones(4, 4))


def test_fused_parameter_with_row_splits_equals_separate_parameters() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(6, 4), torch.randn(3, 4)
    grads = [(torch.randn(6, 4), torch.randn(3, 4)) for _ in range(3)]
    pa, pb = torch.nn.Parameter(a.clone()), torch.nn.Parameter(b.clone())
    fused = torch.nn.Parameter(torch.cat([a, b]))
    fused.row_splits = (6, 3)
    separate, together = Muon([pa, pb], lr=0.1, weight_decay=0.01), Muon([fused], lr=0.1, weight_decay=0.01)
    for ga, gb in grads:
        pa.grad, pb.grad, fused.grad = ga, gb, torch.cat([ga, gb])
        separate.step()
        together.step()
    torch.testing.assert_close(fused.detach(), torch.cat([pa, pb]).detach())
