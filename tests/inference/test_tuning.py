"""Choosing the one-row GEMV's tiles by timing a decode step (scratchlm.inference.tuning): the fastest rule is
kept for the model's weight shapes, once per model; nothing happens where the GEMV does not run. The kernel
module is imported inside the tests (after tests/kernels/conftest.py chose the Triton interpreter)."""

from __future__ import annotations

import pytest
import torch

from scratchlm.inference import tuning
from scratchlm.model import ModelConfig, TransformerLM, layers

CONFIG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, context_length=32, tie_embeddings=False)


@pytest.fixture
def fresh_rules(monkeypatch):
    from scratchlm.kernels import gemv

    monkeypatch.setattr(gemv, "_shape_rules", {})
    monkeypatch.setattr(tuning, "_tuned", {})
    return gemv


def test_no_tuning_where_the_gemv_does_not_run(fresh_rules):
    model = TransformerLM(CONFIG)  # float32 on CPU: decode steps run matmuls
    assert not tuning.uses_gemv(model)
    assert tuning.tune_gemv_tiles(model) is None
    assert fresh_rules._shape_rules == {}
    flat = torch.nn.Module()  # only flat parameters, as FSDP's shards: no matrix to time
    flat.shard = torch.nn.Parameter(torch.zeros(10))
    assert not tuning.uses_gemv(flat)


def test_the_fastest_rule_is_kept_for_the_models_shapes(fresh_rules, monkeypatch):
    gemv = fresh_rules
    monkeypatch.setattr(layers, "_gemv", layers._GemvKernels(lambda x, w: True, gemv.gemv, gemv.gemv_qkv))
    rules = list(gemv.TILE_RULES)
    fake = {rule: 1e-3 * (i + 1) for i, rule in enumerate(reversed(rules))}  # the last rule is the fastest
    calls = []
    monkeypatch.setattr(tuning, "_time_rules", lambda model, *args: calls.append(model) or fake)
    model = TransformerLM(CONFIG)
    shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 2}
    assert (CONFIG.vocab_size, CONFIG.d_model) in shapes and len(shapes) >= 4

    assert tuning.tune_gemv_tiles(model) == fake
    assert {shape: gemv.config(*shape) for shape in shapes} == {
        shape: gemv.TILE_RULES[rules[-1]](shape[1]) for shape in shapes}
    assert gemv.config(7, 7) == gemv.TILE_RULES[gemv.DEFAULT_TILE_RULE](7)  # other shapes: the default

    gemv.use_tile_rule(rules[0], shapes)
    assert tuning.tune_gemv_tiles(TransformerLM(CONFIG)) == fake  # same shapes: not timed again, rule restored
    assert len(calls) == 1 and gemv.config(*next(iter(shapes))) == gemv.TILE_RULES[rules[-1]](next(iter(shapes))[1])


@pytest.mark.gpu
def test_engine_tunes_a_bf16_model_on_the_gpu(fresh_rules):
    """A real tuning as an engine starts: every rule timed, the fastest in use for the model's shapes, and the
    engine decodes with it (each rule's numerics: tests/kernels/test_gemv.py)."""
    from scratchlm.inference.engine import Engine, EngineConfig, SamplingParams

    gemv = fresh_rules
    model = TransformerLM(CONFIG, device="cuda", dtype=torch.bfloat16)
    engine = Engine(model, EngineConfig(max_slots=1, max_len=32))
    (times,) = tuning._tuned.values()
    assert set(times) == set(gemv.TILE_RULES) and all(t > 0 for t in times.values())
    best = min(times, key=times.get)
    for p in model.parameters():
        if p.dim() == 2:
            assert gemv.config(*p.shape) == gemv.TILE_RULES[best](p.shape[1])
    assert len(engine.generate([[1, 2, 3]], SamplingParams(max_tokens=8, temperature=0))[0].token_ids) == 8
