"""Memory accounting: exact parameter/gradient/optimizer-state bytes against hand-computed sizes, and the CPU
allocation tracker against allocations of known size."""

from __future__ import annotations

import pytest
import torch

from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.optim import OptimizerConfig, build_optimizer, cross_entropy
from scratchlm.profiling import memory as mem

FP32 = 4


def trained_one_step(model_cfg: ModelConfig, opt_cfg: OptimizerConfig) -> tuple[TransformerLM, object]:
    """A model after backward and one optimizer step (so optimizer state exists and gradients are alive)."""
    model = TransformerLM(model_cfg)
    optimizer = build_optimizer(model, opt_cfg)
    x = torch.randint(0, model_cfg.vocab_size, (2, 8))
    cross_entropy(model(x), torch.roll(x, -1, dims=1)).backward()
    optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("tie", [False, True])
def test_adamw_sizes_equal_hand_computed(tie):
    cfg = ModelConfig(vocab_size=50, context_length=16, d_model=16, n_layers=2, n_heads=2, d_ff=24, tie_embeddings=tie)
    # by hand: per block q,k,v,o (4 d^2) + SwiGLU (3 d d_ff) + two norms; embedding; head unless tied; final norm
    d, v, f = 16, 50, 24
    n = 2 * (4 * d * d + 3 * d * f + 2 * d) + v * d + (0 if tie else v * d) + d
    model, optimizer = trained_one_step(cfg, OptimizerConfig(name="adamw"))
    assert mem.parameter_bytes(model) == n * FP32
    assert mem.gradient_bytes(model) == n * FP32
    assert mem.optimizer_state_bytes(optimizer) == 2 * n * FP32  # exp_avg and exp_avg_sq
    assert mem.buffer_bytes(model) == sum(b.numel() * b.element_size() for b in model.buffers())
    optimizer.zero_grad(set_to_none=True)
    assert mem.gradient_bytes(model) == 0


def test_muon_state_is_one_buffer_per_hidden_matrix():
    cfg = ModelConfig(vocab_size=40, context_length=16, d_model=16, n_layers=3, n_heads=4, d_ff=32)
    d, v, f = 16, 40, 32
    hidden = 3 * (4 * d * d + 3 * d * f)  # on Muon: one momentum buffer each
    rest = 2 * v * d + 3 * 2 * d + d  # embedding, head, norms on AdamW: two moments each
    model, optimizer = trained_one_step(cfg, OptimizerConfig(name="muon"))
    assert mem.optimizer_state_bytes(optimizer) == (hidden + 2 * rest) * FP32


def test_breakdown_remainder_and_summary():
    b = mem.MemoryBreakdown(parameters=100, buffers=10, gradients=100, optimizer_state=200, peak_allocated=1000,
                            saved_activations=500)
    assert b.activations_and_temporaries == 590
    assert b.to_dict()["activations_and_temporaries"] == 590
    text = b.summary()
    assert "optimizer state" in text and "59.0%" in text and "peak allocated" in text
    without_peak = mem.MemoryBreakdown(parameters=1, buffers=0, gradients=1, optimizer_state=2)
    assert without_peak.activations_and_temporaries is None and "peak" not in without_peak.summary()


def test_cpu_allocation_tracker_counts_known_allocations():
    n = 4096
    kept = torch.empty(0)
    with mem.CpuAllocationTracker() as tracker:
        a = torch.empty(n, dtype=torch.float32)  # +16 KiB
        b = torch.empty(2 * n, dtype=torch.float64)  # +64 KiB
        tracker.mark("both")
        del a  # -16 KiB
        kept = torch.empty(n, dtype=torch.int16)  # +8 KiB
        del b
    assert tracker.net_at("both") == 4 * n + 16 * n
    assert tracker.peak == 4 * n + 16 * n
    assert kept.numel() == n


def test_snapshot_needs_cuda():
    with pytest.raises(ValueError, match="needs a CUDA device"):
        with mem.record_memory_history(torch.device("cpu")):
            pass
