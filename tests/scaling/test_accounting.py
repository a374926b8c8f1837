"""FLOP, token and memory accounting for model configs."""

from __future__ import annotations

import pytest

from scratchlm.model import ModelConfig
from scratchlm.scaling.accounting import approx_training_flops, memory_estimate, tokens_for_budget, training_flops

CFG = ModelConfig(vocab_size=1000, context_length=128, d_model=128, n_layers=3, n_heads=4)


def test_flops_and_tokens_are_inverse():
    assert training_flops(CFG, 1e6) == pytest.approx(CFG.flops_per_token() * 1e6)
    assert tokens_for_budget(CFG, training_flops(CFG, 12345.0)) == pytest.approx(12345.0)
    assert approx_training_flops(CFG, 1e6) == 6 * CFG.n_params(embeddings=False) * 1e6
    # the exact count adds attention on top of 6ND's matmuls
    assert training_flops(CFG, 1e6) > approx_training_flops(CFG, 1e6)


def test_memory_parts():
    n = CFG.n_params()
    adamw = memory_estimate(CFG, batch_size=8)
    assert adamw["weights"] == adamw["gradients"] == 4 * n and adamw["optimizer"] == 8 * n
    assert adamw["total"] == sum(v for k, v in adamw.items() if k != "total")
    muon = memory_estimate(CFG, batch_size=8, optimizer="muon")
    assert muon["optimizer"] == 8 * n - 4 * CFG.n_layers * CFG.layer_matmul_params()
    doubled = memory_estimate(CFG, batch_size=16)
    assert doubled["activations"] == pytest.approx(2 * adamw["activations"])
    assert memory_estimate(CFG, batch_size=8, compute_bytes=4)["activations"] > adamw["activations"]
    with pytest.raises(ValueError, match="unknown optimizer"):
        memory_estimate(CFG, batch_size=8, optimizer="sgd")
