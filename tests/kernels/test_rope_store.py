"""The Triton RoPE + KV-cache store of several decode rows against float64 rotations: queries returned, keys and
values written at each query's position of its row's cache slot and nothing else touched; GQA, positions per
row or shared; argument checks; and a model's cached decoding of several rows through it, equal to the
PyTorch operations."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.common import DEVICE, TOLERANCES, require_triton, rotate64
from tests.model.reference import assert_close_scaled

require_triton()

from scratchlm.kernels.rope_store import rope_store  # noqa: E402
from scratchlm.model.rope import RotaryEmbedding  # noqa: E402


@pytest.mark.parametrize(("b", "t", "n_heads", "n_kv_heads", "head_dim", "shared"),
                         [(2, 3, 4, 2, 16, False), (1, 5, 3, 3, 64, True), (3, 1, 2, 1, 32, False)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rope_store_rotates_and_stores_into_the_cache(b, t, n_heads, n_kv_heads, head_dim, shared, dtype):
    slots, length = b + 1, 20
    rope = RotaryEmbedding(head_dim, length, theta=500.0, device=DEVICE)
    qkv = (torch.randn(b, t, (n_heads + 2 * n_kv_heads) * head_dim, dtype=torch.float64, device=DEVICE) * 3).to(dtype)
    positions = (torch.randperm(length, device=DEVICE)[:t].expand(b, t) if shared
                 else torch.stack([torch.randperm(length, device=DEVICE)[:t] for _ in range(b)]))
    caches = [torch.randn(slots, n_kv_heads, length, head_dim, device=DEVICE).to(dtype) for _ in range(2)]
    before = [c.clone() for c in caches]
    q = rope_store(qkv, rope.cos, rope.sin, positions[0] if shared else positions, *caches, n_heads)

    q64, k64, v64 = qkv.double().split((n_heads * head_dim, n_kv_heads * head_dim, n_kv_heads * head_dim), dim=-1)
    cos, sin = rope.cos[positions][:, :, None], rope.sin[positions][:, :, None]  # (b, t, 1, D/2)
    assert q.shape == (b, n_heads, t, head_dim) and q.dtype == dtype
    assert_close_scaled(q.double(), rotate64(q64.view(b, t, n_heads, head_dim), cos, sin).transpose(1, 2), "q",
                        **TOLERANCES[dtype])
    rows = torch.arange(b, device=DEVICE)[:, None].expand(b, t)
    written = torch.zeros(slots, length, dtype=torch.bool, device=DEVICE)
    written[rows, positions] = True
    for name, cache, old, expected in [("k", caches[0], before[0], rotate64(k64.view(b, t, n_kv_heads, head_dim), cos, sin)),
                                       ("v", caches[1], before[1], v64.view(b, t, n_kv_heads, head_dim))]:
        assert_close_scaled(cache[rows, :, positions].double(), expected, f"{name} cache", **TOLERANCES[dtype])
        untouched = ~written[:, None, :, None].expand_as(cache)
        assert torch.equal(cache[untouched], old[untouched])


def test_a_position_past_the_cache_writes_nothing():
    """The model does not check positions on the host (that would sync): a bad one must not write outside the
    cache (PyTorch's indexed store would raise on the device instead)."""
    rope = RotaryEmbedding(16, 40, device=DEVICE)  # tables longer than the cache
    qkv = torch.randn(1, 2, 4 * 16, device=DEVICE)
    cache = torch.zeros(2, 1, 8, 16, device=DEVICE)  # two slots of 8 positions: slot 1 lies right after slot 0
    rope_store(qkv, rope.cos, rope.sin, torch.tensor([7, 8], device=DEVICE), cache, cache.clone(), 2)
    assert cache[0, :, 7].abs().sum() > 0 and torch.equal(cache[1], torch.zeros_like(cache[1]))


def test_rope_store_arguments_are_checked():
    rope = RotaryEmbedding(8, 4, device=DEVICE)
    qkv = torch.randn(1, 2, 4 * 8, device=DEVICE)  # 2 query heads + 1 key + 1 value head of 8
    cache = torch.zeros(1, 1, 4, 8, device=DEVICE)
    positions = torch.tensor([1, 2], device=DEVICE)
    rope_store(qkv, rope.cos, rope.sin, positions, cache, cache.clone(), 2)  # valid
    with pytest.raises(ValueError, match="n_heads"):
        rope_store(qkv, rope.cos, rope.sin, positions, cache, cache.clone(), 3)
    with pytest.raises(ValueError, match="slots >= B"):
        rope_store(torch.cat([qkv, qkv]), rope.cos, rope.sin, positions, cache, cache.clone(), 2)
    with pytest.raises(ValueError, match="cos and sin"):
        rope_store(qkv, rope.cos[:, :3], rope.sin, positions, cache, cache.clone(), 2)
    with pytest.raises(ValueError, match="positions"):
        rope_store(qkv, rope.cos, rope.sin, positions.int(), cache, cache.clone(), 2)
    with pytest.raises(ValueError, match="positions"):
        rope_store(qkv, rope.cos, rope.sin, positions[:1], cache, cache.clone(), 2)


def test_cached_decoding_of_several_rows_goes_through_it(monkeypatch):
    """A model's forward over several rows with a KV cache (the engine's batched steps, speculative
    verification) rotates and stores with the kernel (forced on here, on the CPU): the logits and the cache
    of the PyTorch operations."""
    from scratchlm.inference.kv_cache import KVCache
    from scratchlm.model import ModelConfig, TransformerLM, attention, layers

    calls = []

    def counted(*args):
        calls.append(args[0].shape)
        return rope_store(*args)

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, context_length=16)
    model = TransformerLM(config, device=DEVICE).eval()
    prompt, step = torch.randint(0, 50, (2, 5), device=DEVICE), torch.randint(0, 50, (2, 3), device=DEVICE)
    results = {}
    for name, kernel in (("torch", None), ("kernel", counted)):
        monkeypatch.setattr(attention, "_rope_store", kernel)
        monkeypatch.setattr(layers, "_inference_kernels_device_type", DEVICE.type)
        cache = KVCache(config, 2, 16, device=DEVICE)
        with torch.no_grad():
            model(prompt, torch.arange(5, device=DEVICE), kv_cache=cache, logits=False)
            # int32 positions: the PyTorch path indexes with them, the kernel takes them as long
            logits = model(step, torch.tensor([[5, 6, 7], [9, 10, 11]], device=DEVICE).int(), kv_cache=cache)
        results[name] = logits, torch.stack(cache.k + cache.v)
    assert len(calls) == 2 * config.n_layers  # prompt and step, every layer
    for got, expected in zip(results["kernel"], results["torch"], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
