"""Sampling rules against their definitions, and generation's stopping and cropping."""

from __future__ import annotations

import pytest
import torch

from scratchlm.inference import generate, sample_next
from scratchlm.model import ModelConfig, TransformerLM


def draw(logits: torch.Tensor, n: int, **kwargs) -> torch.Tensor:
    """Frequencies of n samples from one row of logits."""
    gen = torch.Generator().manual_seed(0)
    ids = sample_next(logits.expand(n, -1), generator=gen, **kwargs)
    return torch.bincount(ids, minlength=logits.shape[-1]).double() / n


def test_greedy_is_argmax():
    logits = torch.randn(5, 50)
    assert torch.equal(sample_next(logits, temperature=0), logits.argmax(-1))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_frequencies_follow_softmax_at_temperature(temperature):
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    freq = draw(logits, 40_000, temperature=temperature)
    expected = torch.softmax(logits.double() / temperature, -1)
    assert (freq - expected).abs().max() < 0.01


def test_top_k_keeps_the_k_most_likely_renormalised():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    freq = draw(logits, 40_000, top_k=2)
    expected = torch.softmax(torch.tensor([3.0, 2.0], dtype=torch.float64), -1)
    assert freq[2:].sum() == 0 and (freq[:2] - expected).abs().max() < 0.01


def test_top_p_keeps_the_smallest_prefix_holding_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    freq = draw(logits, 40_000, top_p=0.8)  # 0.5 + 0.3 reaches 0.8: the nucleus is {0, 1}
    assert freq[2:].sum() == 0 and abs(freq[0] - 0.5 / 0.8) < 0.01
    freq = draw(logits, 40_000, top_p=0.81)  # needs the third token too
    assert freq[3] == 0 and freq[2] > 0.1
    assert draw(logits, 1000, top_p=0.1)[0] == 1  # the top token always stays


def test_seeded_sampling_is_reproducible():
    logits = torch.randn(3, 100)
    a = sample_next(logits, generator=torch.Generator().manual_seed(7))
    b = sample_next(logits, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": 0}])
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        sample_next(torch.randn(1, 5), **kwargs)


@pytest.fixture
def model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig(vocab_size=30, context_length=8, d_model=16, n_layers=1, n_heads=2))


def test_generate_greedy_equals_stepwise_argmax(model):
    out = generate(model, [1, 2, 3], 12, temperature=0)
    ids = [1, 2, 3]
    for _ in range(12):  # reference: recompute on the last context_length tokens, take the argmax
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids[-8:]]))[0, -1].argmax()))
    assert out == ids[3:]


def test_generate_stops_after_a_stop_token(model):
    free = generate(model, [1, 2], 20, temperature=0)
    stop = free[4]
    out = generate(model, [1, 2], 20, temperature=0, stop_ids=[stop])
    assert out == free[: free.index(stop) + 1]


def test_generate_seed_and_mode(model):
    a = generate(model, [4], 10, temperature=1.0, top_p=0.9, seed=5)
    assert a == generate(model, [4], 10, temperature=1.0, top_p=0.9, seed=5)
    model.train()
    generate(model, [4], 2)
    assert model.training  # restored
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [], 3)
