"""The persistent decode kernel (every layer of a batch-1 decode step in one launch) against the model's own
layers: logits and every layer's cache after several steps, GQA, a sliding window, attention split over
several programs' worth of slots; the counters left at zero; the model's choice of path; bad inputs. On the
CPU interpreter the grid is one program (the synchronization is exercised on a GPU: the gpu-marked test)."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.common import DEVICE, ON_GPU, TOLERANCES, require_triton
from tests.model.reference import assert_close_scaled

require_triton()

from scratchlm.inference.kv_cache import KVCache  # noqa: E402
from scratchlm.kernels import decode_layers  # noqa: E402
from scratchlm.model import ModelConfig, TransformerLM, layers, transformer  # noqa: E402


@pytest.fixture
def persistent(monkeypatch):
    """The model takes the persistent kernel wherever it applies (also on the CPU, interpreted)."""
    monkeypatch.setattr(transformer, "_decode_layers", decode_layers)
    monkeypatch.setattr(layers, "_inference_kernels_device_type", DEVICE.type)
    return monkeypatch


def decode(model: TransformerLM, cache: KVCache, tokens: list[int], start: int, one_kernel: bool) -> list[torch.Tensor]:
    """Logits of feeding `tokens` one at a time at positions start, start + 1, ..."""
    out = []
    with torch.no_grad(), decode_layers.enabled(one_kernel):
        for i, token in enumerate(tokens):
            ids = torch.tensor([[token]], device=DEVICE)
            out.append(model(ids, torch.tensor([[start + i]], device=DEVICE), kv_cache=cache)[0, -1])
    return out


@pytest.mark.parametrize(("n_heads", "n_kv_heads", "head_dim", "window", "splits"),
                         [(4, 2, 16, None, 4), (2, 2, 32, None, 1), (2, 1, 16, 9, 2)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_one_kernel_decodes_as_the_layers_do(persistent, n_heads, n_kv_heads, head_dim, window, splits, dtype):
    persistent.setattr(decode_layers, "splits", lambda heads, programs: splits)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=40, d_model=n_heads * head_dim, n_layers=2, n_heads=n_heads,
                         n_kv_heads=n_kv_heads, context_length=80, sliding_window=window, rope_theta=100.0)
    model = TransformerLM(config, device=DEVICE, dtype=dtype).eval()
    prompt = torch.randint(0, 40, (1, 37), device=DEVICE)  # past a block of 32 key slots
    caches = [KVCache(config, 1, 64, device=DEVICE, dtype=dtype) for _ in range(2)]
    with torch.no_grad():
        for cache in caches:
            model(prompt, torch.arange(37, device=DEVICE), kv_cache=cache, logits=False)
    tokens = torch.randint(0, 40, (3,)).tolist()
    with torch.no_grad(), decode_layers.enabled(True):
        assert model.decodes_in_one_kernel(model.embed(prompt[:, :1]), caches[0])
    got = decode(model, caches[0], tokens, 37, one_kernel=True)
    expected = decode(model, caches[1], tokens, 37, one_kernel=False)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert_close_scaled(g.double(), e.double(), f"logits of step {i}", **TOLERANCES[dtype])
    for name, ours, theirs in [("k", caches[0].k, caches[1].k), ("v", caches[0].v, caches[1].v)]:
        for layer, (o, t) in enumerate(zip(ours, theirs, strict=True)):
            assert_close_scaled(o.double(), t.double(), f"{name} cache of layer {layer}", **TOLERANCES[dtype])
    assert not decode_layers.counters(DEVICE).any() and decode_layers.timeouts(DEVICE) == 0


def test_the_model_keeps_its_layers_where_the_kernel_does_not_apply(persistent):
    config = ModelConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=2, context_length=16)
    model = TransformerLM(config, device=DEVICE).eval()
    cache = KVCache(config, 2, 16, device=DEVICE)
    one, two = model.embed(torch.zeros(1, 1, dtype=torch.long, device=DEVICE)), model.embed(torch.zeros(2, 1, dtype=torch.long, device=DEVICE))
    with torch.no_grad(), decode_layers.enabled(True):
        assert model.decodes_in_one_kernel(one, cache)
        assert not model.decodes_in_one_kernel(two, cache)  # two rows
        assert not model.decodes_in_one_kernel(one, cache.rows(torch.tensor([1], device=DEVICE), 8))  # a prefill view
        with decode_layers.enabled(False):
            assert not model.decodes_in_one_kernel(one, cache)
    with decode_layers.enabled(True):
        assert not model.decodes_in_one_kernel(one, cache)  # autograd on: training
    qk_norm = TransformerLM(ModelConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=2, context_length=16,
                                        qk_norm=True), device=DEVICE).eval()
    with torch.no_grad(), decode_layers.enabled(True):
        assert not qk_norm.decodes_in_one_kernel(one, cache)


def test_bad_inputs_are_rejected():
    shapes = decode_layers.LayerShapes(n_layers=2, d_model=32, n_heads=2, n_kv_heads=2, head_dim=16, d_ff=64, eps=1e-5)
    x, position = torch.zeros(32, device=DEVICE), torch.zeros(1, dtype=torch.long, device=DEVICE)
    table, tables = torch.zeros(2, 8, dtype=torch.int64, device=DEVICE), torch.zeros(16, 8, device=DEVICE)
    good = dict(x=x, position=position, table=table, cos=tables, sin=tables, shapes=shapes, cache_strides=(256, 16))
    for change, match in [(dict(x=torch.zeros(31, device=DEVICE)), "one contiguous row"),
                          (dict(position=position.int()), "one long"),
                          (dict(table=table[:1]), r"int64 \(2, 8\)"),
                          (dict(cos=torch.zeros(16, 4, device=DEVICE)), "cos and sin"),
                          (dict(shapes=shapes.__class__(**{**shapes.__dict__, "n_kv_heads": 3})), "multiple of n_kv_heads")]:
        with pytest.raises(ValueError, match=match):
            decode_layers.decode_layers(**{**good, **change})


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a GPU")
def test_greedy_decoding_in_one_kernel_on_the_gpu_matches_the_layers():
    """All SMs' programs synchronizing through the counters: a GPT-2-small-shaped model, 64 greedy tokens
    through the engine (CUDA graphs), the same tokens as the per-layer kernels, and no wait timed out."""
    from scratchlm.inference import generate_batch

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=1000, d_model=768, n_layers=4, n_heads=12, context_length=512)
    model = TransformerLM(config, device="cuda", dtype=torch.bfloat16).eval()
    prompts = [torch.randint(0, 1000, (n,)).tolist() for n in (5, 70, 300)]
    for prompt in prompts:
        with decode_layers.enabled(True):
            ours = generate_batch(model, [prompt], 64, temperature=0)
        with decode_layers.enabled(False):
            theirs = generate_batch(model, [prompt], 64, temperature=0)
        assert ours == theirs
    assert decode_layers.timeouts("cuda") == 0 and not decode_layers.counters("cuda").any()
