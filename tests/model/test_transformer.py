"""TransformerLM against a from-scratch float64 forward pass over its state_dict, forward and backward;
backends agree; causality, positions, context length; building on the meta device."""

from __future__ import annotations

import pytest
import torch

from scratchlm.model import ModelConfig, TransformerLM
from tests.model import reference as ref
from tests.model.reference import EXACT64, assert_fwd_bwd

BASE = dict(vocab_size=61, context_length=16, d_model=32, n_layers=2, n_heads=4)
CONFIGS = {
    "default": {},
    "gqa": dict(n_kv_heads=2),
    "mqa": dict(n_kv_heads=1),
    "qk-norm": dict(qk_norm=True),
    "tied": dict(tie_embeddings=True),
    "sliding-window": dict(sliding_window=4),
    "everything": dict(n_kv_heads=2, qk_norm=True, tie_embeddings=True, sliding_window=3, rope_theta=500.0,
                       d_ff=40, norm_eps=1e-3, n_layers=3),
}


def config(name: str, **kw) -> ModelConfig:
    return ModelConfig(**{**BASE, **CONFIGS[name], **kw})


def build(cfg: ModelConfig, dtype=torch.float64) -> TransformerLM:
    """A model whose norm gains are random too (all ones would hide a missing or misplaced gain)."""
    model = TransformerLM(cfg, dtype=dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return model


def tokens(cfg: ModelConfig, batch: int = 2, seq: int | None = None) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (batch, seq or cfg.context_length))


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_float64_reference(name, backend):
    cfg = config(name, attention=backend)
    model = build(cfg)
    params = dict(model.named_parameters())
    assert ("lm_head.weight" in params) != cfg.tie_embeddings
    ids = tokens(cfg, seq=11)
    logits = model(ids)
    assert logits.shape == (2, 11, cfg.vocab_size) and logits.dtype == torch.float64
    assert_fwd_bwd(lambda: model(ids), lambda: ref.transformer_lm(params, cfg, ids), list(params.values()),
                   **EXACT64)


@pytest.mark.parametrize("name", ["default", "everything"])
def test_float32_model_matches_float64_reference(name):
    cfg = config(name)
    model = build(cfg, dtype=torch.float32)
    params64 = {k: v.detach().double() for k, v in model.named_parameters()}
    ids = tokens(cfg)
    logits = model(ids)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits.double(), ref.transformer_lm(params64, cfg, ids), rtol=1e-4, atol=1e-4)


def test_bfloat16_model_runs_in_bfloat16():
    cfg = config("everything")
    model = build(cfg, dtype=torch.float32)
    ids = tokens(cfg)
    expected = model(ids)
    logits = model.to(torch.bfloat16)(ids)
    assert logits.dtype == torch.bfloat16
    relative_error = (logits.float() - expected).norm() / expected.norm()
    assert relative_error < 0.04, relative_error  # bf16 keeps ~3 significant digits per operation


@pytest.mark.parametrize("name", ["default", "gqa", "everything"])
def test_naive_and_sdpa_backends_agree(name):
    """Same parameters, two backends: same logits, same gradient for every parameter."""
    naive = build(config(name, attention="naive"))
    sdpa = TransformerLM(config(name, attention="sdpa"), dtype=torch.float64, device="meta")
    params = dict(naive.named_parameters())
    ids = tokens(naive.config)
    assert set(params) == {n for n, _ in sdpa.named_parameters()}
    # The sdpa model evaluated on the naive model's parameter tensors (its rope tables rebuilt on the CPU).
    sdpa = sdpa.to_empty(device="cpu")
    sdpa.init_weights()
    assert_fwd_bwd(lambda: naive(ids), lambda: torch.func.functional_call(sdpa, params, (ids,)),
                   list(params.values()), **EXACT64)


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@pytest.mark.parametrize("name", ["default", "gqa", "everything"])
def test_causal_changing_a_token_leaves_earlier_logits_alone(name, backend):
    model = build(config(name, attention=backend))
    ids = tokens(model.config)
    t = 6
    changed = ids.clone()
    changed[:, t] = (ids[:, t] + 1) % model.config.vocab_size
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], **EXACT64)
    assert (a[:, t] - b[:, t]).abs().amax(-1).gt(1e-6).all()  # and position t itself sees it


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@pytest.mark.parametrize(("window", "n_layers"), [(1, 2), (3, 2), (4, 3)])
def test_sliding_window_receptive_field(window, n_layers, backend):
    """Each layer looks window - 1 positions back: token t reaches t .. t + n_layers (window - 1), no further."""
    model = build(config("default", sliding_window=window, n_layers=n_layers, attention=backend))
    ids = tokens(model.config, batch=1)
    t = 2
    changed = ids.clone()
    changed[:, t] = (ids[:, t] + 1) % model.config.vocab_size
    diff = (model(ids) - model(changed)).abs().amax(-1)[0]
    reach = t + n_layers * (window - 1)
    assert (diff[:t] == 0).all() and (diff[reach + 1:] == 0).all(), diff
    assert (diff[t: reach + 1] > 1e-6).all(), diff


@pytest.mark.parametrize("name", ["default", "everything"])
def test_token_positions_explicit_equal_default(name):
    model = build(config(name))
    ids = tokens(model.config, batch=3, seq=10)
    expected = model(ids)
    for positions in (torch.arange(10), torch.arange(10).expand(3, 10)):
        torch.testing.assert_close(model(ids, token_positions=positions), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["default", "everything"])
def test_shifting_positions_changes_nothing(name):
    """RoPE sees only relative positions: per-row offsets given as (batch, seq) positions leave the logits alone."""
    model = build(config(name))
    ids = tokens(model.config, batch=3, seq=8)
    positions = torch.arange(8) + torch.tensor([0, 3, 8])[:, None]
    torch.testing.assert_close(model(ids, token_positions=positions), model(ids), **EXACT64)
    scrambled = torch.arange(8).flip(0)  # and positions do matter
    assert not torch.allclose(model(ids, token_positions=scrambled), model(ids), atol=1e-3)


def test_sequence_longer_than_context_raises():
    model = build(config("default"))
    model(tokens(model.config, seq=16))  # exactly the context is fine
    with pytest.raises(ValueError, match="17 tokens exceeds context_length 16"):
        model(tokens(model.config, seq=17))


def test_structure_and_shared_rope():
    cfg = config("everything")
    model = TransformerLM(cfg)
    ropes = {id(layer.attn.rope) for layer in model.layers}
    assert len(ropes) == 1 and len(model.layers) == cfg.n_layers
    assert model.lm_head is None and model.embed.std == pytest.approx(cfg.d_model ** -0.5)
    untied = TransformerLM(config("default"))
    assert untied.embed.std == 1.0 and untied.lm_head.weight.shape == (61, 32)


@pytest.mark.parametrize("name", ["default", "everything"])
def test_meta_build_then_init_weights(name):
    cfg = config(name)
    model = TransformerLM(cfg, device="meta")
    assert all(p.is_meta for p in model.parameters())
    model = model.to_empty(device="cpu")
    model.init_weights()
    fresh = TransformerLM(cfg)
    rope, fresh_rope = model.layers[0].attn.rope, fresh.layers[0].attn.rope
    assert torch.equal(rope.cos, fresh_rope.cos) and torch.equal(rope.sin, fresh_rope.sin)
    for (name_, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        assert p.shape == q.shape, name_
        if name_.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name_
        else:
            assert p.std().item() == pytest.approx(q.std().item(), rel=0.25), name_
    assert torch.isfinite(model(tokens(cfg))).all()
