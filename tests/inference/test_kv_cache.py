"""Cached generation equals full recomputation, token for token; batched equals one by one."""

from __future__ import annotations

import pytest
import torch

from scratchlm.inference import KVCache, generate, generate_batch
from scratchlm.model import ModelConfig, TransformerLM

CONFIGS = {
    "mha": dict(),
    "gqa-qknorm": dict(n_kv_heads=1, qk_norm=True),
    "window": dict(sliding_window=5),
    "tied-sdpa": dict(tie_embeddings=True, attention="sdpa"),
}


def model_for(name: str) -> TransformerLM:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, context_length=32, d_model=32, n_layers=2, n_heads=4, **CONFIGS[name])
    return TransformerLM(cfg, dtype=torch.float64)


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_logits_equal_full_forward(name):
    model = model_for(name)
    ids = torch.randint(0, 40, (2, 12))
    full = model(ids)
    cache = KVCache(model.config, 2, 16, dtype=torch.float64)
    prefill = model(ids[:, :7], torch.arange(7), kv_cache=cache)
    steps = [model(ids[:, t : t + 1], torch.tensor([t]), kv_cache=cache) for t in range(7, 12)]
    torch.testing.assert_close(torch.cat([prefill, *steps], dim=1), full, rtol=1e-10, atol=1e-10)


def test_greedy_generate_batch_equals_naive_and_batched_equals_one_by_one():
    """The wrapper over the engine (whose own tests cover every attention shape)."""
    model = model_for("gqa-qknorm")
    prompts = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11], [4]]
    batched = generate_batch(model, prompts, 10, temperature=0)
    for prompt, out in zip(prompts, batched):
        assert out == generate(model, prompt, 10, temperature=0)
        assert out == generate_batch(model, [prompt], 10, temperature=0)[0]


def test_sampled_generate_batch_is_seeded_per_prompt():
    """A prompt's sample depends on the seed and its index only, not on its batch (the law itself is tested
    against full recomputation in test_engine)."""
    model = model_for("mha")
    batch = generate_batch(model, [[3, 1], [5, 6, 7]], 12, temperature=1.0, top_p=0.9, seed=4)
    assert batch[0] == generate_batch(model, [[3, 1]], 12, temperature=1.0, top_p=0.9, seed=4)[0]
    assert batch == generate_batch(model, [[3, 1], [5, 6, 7]], 12, temperature=1.0, top_p=0.9, seed=4)
    assert batch[0] != generate_batch(model, [[3, 1]], 12, temperature=1.0, top_p=0.9, seed=5)[0]


def test_stops_per_row_and_context_limit():
    model = model_for("mha")
    free = generate_batch(model, [[1, 2], [7]], 8, temperature=0)
    stop = free[0][2]
    out = generate_batch(model, [[1, 2], [7]], 8, temperature=0, stop_ids=[stop])
    assert out[0] == free[0][: free[0].index(stop) + 1]
    assert out[1] == free[1][: free[1].index(stop) + 1] if stop in free[1] else out[1] == free[1]
    with pytest.raises(ValueError, match="exceeds the context length"):
        generate_batch(model, [[1] * 30], 5)
    with pytest.raises(ValueError, match="needs token_positions"):
        model(torch.tensor([[1]]), kv_cache=KVCache(model.config, 1))
