"""The kernels inside the model: backend selection, the flash backend's fallbacks, and a training step (loss and
every gradient) with flash attention + Triton RMSNorm against the naive attention + eager RMSNorm model."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from tests.kernels.common import DEVICE, ON_GPU, leaf, require_triton

require_triton()

from scratchlm.kernels import flash_attention as fa  # noqa: E402
from scratchlm.kernels.decode_attention import decode_attention  # noqa: E402
from scratchlm.kernels.flash_attention import flash_attention, flash_attention_fn  # noqa: E402
from scratchlm.kernels.rmsnorm import rms_norm  # noqa: E402
from scratchlm.model import ModelConfig, TransformerLM, get_attention, naive_attention, sdpa_attention  # noqa: E402
from scratchlm.model.attention import position_mask  # noqa: E402


def test_get_attention_picks_flash():
    assert get_attention("flash", DEVICE.type) is flash_attention_fn
    assert get_attention("auto", "cuda") is flash_attention_fn
    assert get_attention("auto", "cpu") is naive_attention


def test_flash_backend_runs_the_kernels():
    q, k, v = leaf(1, 4, 20, 64, dtype=torch.float32), leaf(1, 2, 20, 64, dtype=torch.float32), \
        leaf(1, 2, 20, 64, dtype=torch.float32)
    torch.testing.assert_close(flash_attention_fn(q, k, v), flash_attention(q, k, v), rtol=0, atol=0)


def test_flash_backend_decodes_with_the_decode_kernel():
    """One query per row with its position (a KV-cache decode step) runs decode_attention on the positions."""
    q, k, v = leaf(3, 4, 1, 64, dtype=torch.float32), leaf(3, 2, 70, 64, dtype=torch.float32), \
        leaf(3, 2, 70, 64, dtype=torch.float32)
    positions = torch.tensor([[3], [40], [69]], device=DEVICE)
    mask = position_mask(positions, 70, 20)
    torch.testing.assert_close(flash_attention_fn(q, k, v, 20, mask, positions),
                               decode_attention(q, k, v, positions[:, 0], 20), rtol=0, atol=0)


def fallback_cases():
    f32, f64 = torch.float32, torch.float64
    return {
        "mask": ((1, 4, 3, 64), (1, 2, 9, 64), f32, None, position_mask(torch.tensor([4, 5, 6]), 9)),
        "mask-without-positions": ((1, 4, 1, 64), (1, 2, 9, 64), f32, None, position_mask(torch.tensor([4]), 9)),
        "sliding-window": ((1, 2, 7, 64), (1, 2, 7, 64), f32, 3, None),
        "head-dim-32": ((2, 2, 7, 32), (2, 1, 7, 32), f32, None, None),
        "float64": ((1, 2, 7, 64), (1, 2, 7, 64), f64, None, None),
    }


@pytest.mark.parametrize("case", list(fallback_cases()))
def test_flash_backend_falls_back_where_the_kernels_do_not_apply(case, caplog):
    q_shape, kv_shape, dtype, window, mask = fallback_cases()[case]
    q, k, v = leaf(*q_shape, dtype=dtype), leaf(*kv_shape, dtype=dtype), leaf(*kv_shape, dtype=dtype)
    mask = None if mask is None else mask.to(DEVICE)
    fa._logged_fallbacks.clear()
    with caplog.at_level(logging.DEBUG, logger=fa.__name__):
        out = flash_attention_fn(q, k, v, window, mask)
        flash_attention_fn(q, k, v, window, mask)
    fallback = sdpa_attention if ON_GPU else naive_attention
    torch.testing.assert_close(out, fallback(q, k, v, window, mask), rtol=0, atol=0)
    assert len([r for r in caplog.records if "not supported by the kernels" in r.message]) == 1  # once


def test_forced_flash_on_a_device_triton_cannot_use_is_an_error(monkeypatch):
    monkeypatch.setattr(fa, "INTERPRETED", False)
    q = torch.randn(1, 2, 4, 64)
    with pytest.raises(ValueError, match="'flash' is not available on cpu.*use 'naive' or 'sdpa'"):
        flash_attention_fn(q, q, q)


# -- a training step -------------------------------------------------------------------------------


def tiny_config(**kw) -> ModelConfig:
    """Head dim 64 (a kernel size), GQA, qk-norm (RMSNorm on (B, H, T, hd) views), untied head."""
    base = dict(vocab_size=64, context_length=40, d_model=128, n_layers=2, n_heads=2, n_kv_heads=1, qk_norm=True)
    return ModelConfig(**{**base, **kw})


def loss_and_grads(model: TransformerLM, ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, dict]:
    with torch.autocast(DEVICE.type, dtype=dtype, enabled=dtype != torch.float32):
        logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
    model.zero_grad()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def twin_models(**kw) -> tuple[TransformerLM, TransformerLM]:
    ours = TransformerLM(tiny_config(attention="flash", norm_backend="triton", **kw), device=DEVICE)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
    baseline = TransformerLM(tiny_config(attention="naive", norm_backend="torch", **kw), device=DEVICE)
    baseline.load_state_dict(ours.state_dict())
    return ours, baseline


@pytest.mark.parametrize(("dtype", "rtol", "atol"), [(torch.float32, 1e-4, 1e-5), (torch.bfloat16, 3e-2, 3e-3)],
                         ids=["float32", "bfloat16-autocast"])
def test_training_step_matches_naive_backends(dtype, rtol, atol):
    ours, baseline = twin_models()
    assert any(m.triton_kernel is not None for m in ours.modules() if hasattr(m, "triton_kernel"))
    ids = torch.randint(0, 64, (2, 30), device=DEVICE)  # 29 positions: not a multiple of any tile
    loss, grads = loss_and_grads(ours, ids, dtype)
    expected_loss, expected_grads = loss_and_grads(baseline, ids, dtype)
    torch.testing.assert_close(loss, expected_loss, rtol=rtol, atol=atol)
    for name, g in grads.items():
        e = expected_grads[name]
        scale = max(1.0, e.abs().max().item())
        torch.testing.assert_close(g, e, rtol=rtol, atol=atol * scale, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("window", [None, 6])
def test_cached_decoding_matches_naive_backends(window):
    """Prefill, then decode steps through a KV cache with the rows at different positions: the flash backend's
    decode kernel (fed the positions, no mask) gives the naive backend's logits."""
    from scratchlm.inference.kv_cache import KVCache

    ours, baseline = twin_models(sliding_window=window)
    prompt = torch.randint(0, 64, (2, 12), device=DEVICE)
    logits = []
    with torch.no_grad():
        for model in (ours, baseline):
            cache = KVCache(model.config, 2, 32, device=DEVICE)
            model(prompt, torch.arange(12, device=DEVICE), kv_cache=cache)
            steps = []
            for step in range(4):  # row 0 continues at 12.., row 1 rewinds to 7.. (its later slots: stale)
                positions = torch.tensor([[12 + step], [7 + step]], device=DEVICE)
                steps.append(model(prompt[:, step:step + 1], positions, kv_cache=cache))
            logits.append(torch.cat(steps, dim=1))
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_training_step_gpu_bf16_and_compiled():
    ours, baseline = twin_models(context_length=512, d_model=512, n_heads=8, n_kv_heads=2, n_layers=4)
    ids = torch.randint(0, 64, (4, 512), device=DEVICE)
    loss, grads = loss_and_grads(ours, ids, torch.bfloat16)
    expected_loss, expected_grads = loss_and_grads(baseline, ids, torch.bfloat16)
    torch.testing.assert_close(loss, expected_loss, rtol=2e-2, atol=2e-2)
    for name, g in grads.items():
        scale = max(1.0, expected_grads[name].abs().max().item())
        torch.testing.assert_close(g, expected_grads[name], rtol=5e-2, atol=5e-3 * scale, msg=lambda m, n=name: f"{n}: {m}")
    compiled = torch.compile(ours)
    compiled_loss, _ = loss_and_grads(compiled, ids, torch.bfloat16)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-2, atol=1e-2)


def test_kernels_trace_under_torch_compile_without_graph_breaks():
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward through the custom ops'
    fake implementations (their shapes and strides must match the real ones) without needing a C++ compiler."""
    q, k, v = leaf(1, 2, 20, 64, dtype=torch.float32), leaf(1, 1, 20, 64, dtype=torch.float32), \
        leaf(1, 1, 20, 64, dtype=torch.float32)
    w = leaf(64, dtype=torch.float32)

    def step(q, k, v, w):
        return rms_norm(flash_attention(q, k, v).transpose(1, 2), w).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(q, k, v, w)
    grads = torch.autograd.grad(loss, (q, k, v, w))
    expected = step(q, k, v, w)
    expected_grads = torch.autograd.grad(expected, (q, k, v, w))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("q_layout", ["contiguous", "model"])
def test_custom_ops_fake_implementations_match_the_kernels(q_layout):
    """torch.library.opcheck runs each op for real and through its fake implementation and compares shapes
    and strides (torch.compile plans memory from the fakes): dq follows q's layout, which differs between a
    contiguous leaf and the model's transposed projection."""
    q = torch.randn(1, 20, 2, 64).transpose(1, 2) if q_layout == "model" else torch.randn(1, 2, 20, 64)
    k, v = torch.randn(1, 1, 20, 64), torch.randn(1, 1, 20, 64)
    o, lse = torch.ops.scratchlm.flash_attention_fwd(q, k, v, True)
    torch.library.opcheck(torch.ops.scratchlm.flash_attention_fwd, (q, k, v, True), test_utils="test_faketensor")
    torch.library.opcheck(torch.ops.scratchlm.flash_attention_bwd, (torch.randn_like(o), q, k, v, o, lse, True),
                          test_utils="test_faketensor")


def test_lazy_backend_that_cannot_import(monkeypatch):
    """Without Triton: forcing flash is a clear error, auto on CUDA falls back to sdpa."""
    from scratchlm.model import attention

    monkeypatch.setattr(attention, "_UNAVAILABLE", {"flash": "No module named 'triton'"})
    monkeypatch.delitem(attention.ATTENTION_BACKENDS, "flash")
    with pytest.raises(ValueError, match=r"'flash' is not available \(No module named 'triton'\).*'naive' or 'sdpa'"):
        get_attention("flash", "cuda")
    assert get_attention("auto", "cuda") is sdpa_attention


def test_engine_decodes_the_same_with_the_kernels():
    """KV-cache generation (prefill falls back, decode steps run the decode kernel) with flash + Triton RMSNorm
    gives the naive model's greedy tokens and log-probabilities."""
    from scratchlm.inference.engine import Engine, EngineConfig, SamplingParams

    ours, baseline = twin_models()
    prompts, params = [[1, 2, 3, 4, 5], [7], [9, 8, 7]], SamplingParams(max_tokens=6, temperature=0)
    config = EngineConfig(max_slots=2, sync_every=3)
    got, expected = (Engine(m, config).generate(prompts, params) for m in (ours, baseline))
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    torch.testing.assert_close(torch.tensor([o.logprobs for o in got]), torch.tensor([o.logprobs for o in expected]),
                               rtol=1e-4, atol=1e-4)
