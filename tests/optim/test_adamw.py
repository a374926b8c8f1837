"""AdamW against torch.optim.AdamW: same gradients in, same parameters out, over 1,000 steps."""

from __future__ import annotations

import copy

import pytest
import torch

from scratchlm.optim import AdamW

SHAPES = [(16, 8), (8,), (4, 3, 5), (1,)]
HYPER = dict(betas=(0.9, 0.95), eps=1e-8)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def make_params(seed: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype).to(device).requires_grad_() for shape in SHAPES]


def groups(params: list[torch.Tensor]) -> list[dict]:
    """Two groups with different lr and weight decay (matrices decayed, vectors not)."""
    return [
        {"params": [params[0], params[2]], "lr": 1e-2, "weight_decay": 0.1},
        {"params": [params[1], params[3]], "lr": 3e-3, "weight_decay": 0.0},
    ]


def grad_stream(params: list[torch.Tensor], steps: int, seed: int) -> list[list[torch.Tensor]]:
    """`steps` rounds of seeded random gradients, scaled per step so the moments see varied magnitudes."""
    gen = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) * 10.0 ** (step % 5 - 2) for p in params]
        for step in range(steps)
    ]


def run(params: list[torch.Tensor], opt: torch.optim.Optimizer, grads: list[list[torch.Tensor]]) -> None:
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torch_adamw_over_1000_steps(dtype: torch.dtype, device: str) -> None:
    ours, theirs = make_params(0, dtype, device), make_params(0, dtype, device)
    grads = grad_stream(ours, 1000, seed=1)
    run(ours, AdamW(groups(ours), **HYPER), grads)
    run(theirs, torch.optim.AdamW(groups(theirs), foreach=False, **HYPER), grads)
    atol = 1e-6 if dtype == torch.float32 else 1e-10  # in practice the two agree bit for bit
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)


def test_state_keys_and_step_count() -> None:
    params = make_params(2)
    opt = AdamW(groups(params), **HYPER)
    run(params, opt, grad_stream(params, 3, seed=3))
    state = opt.state[params[0]]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
    assert state["step"] == 3
    assert state["exp_avg"].shape == params[0].shape


def test_state_dict_resume_equals_uninterrupted() -> None:
    straight, first = make_params(4), make_params(4)
    grads = grad_stream(straight, 200, seed=5)
    run(straight, AdamW(groups(straight), **HYPER), grads)

    opt = AdamW(groups(first), **HYPER)
    run(first, opt, grads[:100])
    saved = copy.deepcopy(opt.state_dict())
    resumed = [p.detach().clone().requires_grad_() for p in first]
    opt2 = AdamW(groups(resumed), lr=0.5, weight_decay=0.5)  # hyperparameters come back from the state_dict
    opt2.load_state_dict(saved)
    run(resumed, opt2, grads[100:])
    for a, b in zip(resumed, straight):
        assert torch.equal(a, b)
    assert opt2.state[resumed[0]]["step"] == 200


def test_param_without_grad_is_untouched_and_has_no_state() -> None:
    params = make_params(6)
    opt = AdamW(groups(params), **HYPER)
    frozen_before = params[2].detach().clone()
    for _ in range(5):
        for i, p in enumerate(params):
            p.grad = None if i == 2 else torch.randn_like(p)
        opt.step()
    assert torch.equal(params[2], frozen_before)
    assert params[2] not in opt.state
    assert opt.state[params[0]]["step"] == 5


def test_closure_is_evaluated_with_grad() -> None:
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = AdamW([w], lr=0.1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(5.0)
    assert w.abs().sum().item() < 3.0


def test_rejects_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="betas"):
        AdamW([torch.zeros(2, requires_grad=True)], betas=(0.9, 1.0))
