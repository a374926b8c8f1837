"""Parameter assignment to optimizers and weight-decay groups, and CombinedOptimizer."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from scratchlm.config import ConfigError
from scratchlm.optim import AdamW, CombinedOptimizer, Muon, OptimizerConfig, build_optimizer, set_lr


class Attention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dim, dim, bias=False)


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attn = Attention(dim)


class ToyLM(nn.Module):
    """Parameter names as in a real model: tok_embeddings.weight, layers.0.attn.q_proj.weight, ..."""

    def __init__(self, vocab: int = 11, dim: int = 8, tied: bool = False) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList([Block(dim)])
        self.norm = nn.RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.frozen = nn.Parameter(torch.zeros(dim, dim), requires_grad=False)
        if tied:
            self.lm_head.weight = self.tok_embeddings.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok_embeddings(tokens)  # (B, T, dim)
        x = x + self.layers[0].attn.q_proj(x)
        return self.lm_head(self.norm(x))  # (B, T, vocab)


def group_names(model: nn.Module, opt: AdamW | CombinedOptimizer) -> dict[str, set[str]]:
    """{group name: names of its parameters}."""
    names = {id(p): name for name, p in model.named_parameters()}
    return {g["name"]: {names[id(p)] for p in g["params"]} for g in opt.param_groups}


def test_adamw_groups() -> None:
    model = ToyLM()
    opt = build_optimizer(model, OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.05))
    assert isinstance(opt, AdamW)
    assert group_names(model, opt) == {
        "decay": {"layers.0.attn.q_proj.weight", "lm_head.weight"},
        "no_decay": {"tok_embeddings.weight", "norm.weight"},
    }
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert all(g["lr"] == 1e-3 and g["betas"] == (0.9, 0.95) for g in opt.param_groups)


def test_muon_groups() -> None:
    model = ToyLM()
    cfg = OptimizerConfig(name="muon", muon_lr=0.03, muon_momentum=0.9, muon_ns_steps=4, muon_weight_decay=0.01)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, CombinedOptimizer)
    muon, adamw = opt.optimizers
    assert isinstance(muon, Muon) and isinstance(adamw, AdamW)
    assert group_names(model, opt) == {
        "muon": {"layers.0.attn.q_proj.weight"},
        "decay": {"lm_head.weight"},
        "no_decay": {"tok_embeddings.weight", "norm.weight"},
    }
    (muon_group,) = muon.param_groups
    assert (muon_group["lr"], muon_group["momentum"], muon_group["ns_steps"], muon_group["weight_decay"]) == (
        0.03, 0.9, 4, 0.01,
    )


def test_tied_weight_appears_once() -> None:
    # named_parameters() lists the shared tensor once, under its first name: an embedding, so no decay
    model = ToyLM(tied=True)
    adamw = build_optimizer(model, OptimizerConfig(name="adamw"))
    assert group_names(model, adamw) == {
        "decay": {"layers.0.attn.q_proj.weight"},
        "no_decay": {"tok_embeddings.weight", "norm.weight"},
    }
    muon = build_optimizer(model, OptimizerConfig(name="muon"))
    assert group_names(model, muon) == {
        "muon": {"layers.0.attn.q_proj.weight"},
        "no_decay": {"tok_embeddings.weight", "norm.weight"},
    }
    for opt in (adamw, muon):
        params = [p for g in opt.param_groups for p in g["params"]]
        assert len(params) == len({id(p) for p in params}) == 3


def train_steps(model: nn.Module, opt: AdamW | CombinedOptimizer, steps: int, gen: torch.Generator) -> None:
    for _ in range(steps):
        tokens = torch.randint(0, 11, (2, 5), generator=gen)
        opt.zero_grad()
        model(tokens).square().mean().backward()
        opt.step()


def test_combined_state_dict_resume_equals_uninterrupted() -> None:
    torch.manual_seed(0)
    model = ToyLM()
    straight, first = copy.deepcopy(model), copy.deepcopy(model)
    cfg = OptimizerConfig(name="muon")
    train_steps(straight, build_optimizer(straight, cfg), 6, torch.Generator().manual_seed(1))

    gen = torch.Generator().manual_seed(1)  # the same batches, continued across the checkpoint
    opt = build_optimizer(first, cfg)
    train_steps(first, opt, 3, gen)
    saved = copy.deepcopy(opt.state_dict())
    assert len(saved["optimizers"]) == 2
    resumed = copy.deepcopy(first)
    opt2 = build_optimizer(resumed, cfg)
    opt2.load_state_dict(saved)
    train_steps(resumed, opt2, 3, gen)
    for (name, a), b in zip(resumed.named_parameters(), straight.parameters()):
        assert torch.equal(a, b), name


def test_set_lr_over_combined_optimizer() -> None:
    opt = build_optimizer(ToyLM(), OptimizerConfig(name="muon", lr=1e-3, muon_lr=0.02))
    set_lr(opt, 0.5)
    assert {g["name"]: g["lr"] for g in opt.param_groups} == pytest.approx(
        {"muon": 0.01, "decay": 5e-4, "no_decay": 5e-4}
    )
    assert opt.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01)


def test_zero_grad_and_closure() -> None:
    model = ToyLM()
    opt = build_optimizer(model, OptimizerConfig(name="muon"))
    tokens = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(2))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = model(tokens).square().mean()
        loss.backward()
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    assert torch.isfinite(opt.step(closure))
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()) if b.requires_grad)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_load_state_dict_rejects_mismatch() -> None:
    opt = build_optimizer(ToyLM(), OptimizerConfig(name="muon"))
    with pytest.raises(ValueError, match="holds 2"):
        opt.load_state_dict({"optimizers": [opt.optimizers[0].state_dict()]})


@pytest.mark.parametrize("kwargs", [{"name": "sgd"}, {"lr": 0.0}, {"beta2": 1.0}, {"grad_clip": -1.0},
                                    {"muon_ns_steps": 0}])
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        OptimizerConfig(**kwargs)
