"""ModelConfig: validation, defaults, parameter counts against the module, FLOP counts against PyTorch's
FlopCounterMode and a brute-force count of the attention mask; the preset model shapes."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from fractions import Fraction

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from scratchlm.config import ConfigError, configs_dir, from_dict, load_config_file
from scratchlm.model import Linear, ModelConfig, TransformerLM, naive_attention
from tests.model import reference as ref

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BASE = dict(vocab_size=61, context_length=16, d_model=32, n_layers=2, n_heads=4)
SHAPES = {
    "default": {},
    "gqa": dict(n_kv_heads=2),
    "mqa": dict(n_kv_heads=1, d_ff=40),
    "qk-norm": dict(qk_norm=True),
    "tied": dict(tie_embeddings=True),
    "tied-qk-norm-gqa": dict(tie_embeddings=True, qk_norm=True, n_kv_heads=2, n_layers=3),
    "sliding-window": dict(sliding_window=5),
    "window-1": dict(sliding_window=1, tie_embeddings=True),
}


def config(name: str, **kw) -> ModelConfig:
    return ModelConfig(**{**BASE, **SHAPES[name], **kw})


# -- validation and defaults ----------------------------------------------------------------------

INVALID = [
    pytest.param(dict(d_model=30, n_heads=4), r"d_model \(30\) must be divisible by model.n_heads \(4\)", id="d_model%n_heads"),
    pytest.param(dict(n_heads=4, n_kv_heads=3), r"n_heads \(4\) must be a multiple of model.n_kv_heads \(3\)", id="n_heads%n_kv"),
    pytest.param(dict(n_heads=8, n_kv_heads=16), r"multiple of model.n_kv_heads", id="more-kv-than-q-heads"),
    pytest.param(dict(d_model=12, n_heads=4), r"head dimension .* = 3 must be even", id="odd-head-dim"),
    pytest.param(dict(rope_theta=0.0), r"rope_theta and model.norm_eps must be positive", id="rope_theta=0"),
    pytest.param(dict(norm_eps=-1e-5), r"rope_theta and model.norm_eps must be positive", id="norm_eps<0"),
    pytest.param(dict(sliding_window=0), r"sliding_window must be positive or unset, got 0", id="window=0"),
    pytest.param(dict(sliding_window=-3), r"sliding_window must be positive or unset, got -3", id="window<0"),
] + [
    pytest.param({name: value}, rf"model.{name} must be positive, got {value}", id=f"{name}={value}")
    for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff")
    for value in (0, -1)
]


@pytest.mark.parametrize(("kwargs", "message"), INVALID)
def test_invalid_configs_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**kwargs)
    assert issubclass(ConfigError, ValueError)


def test_replace_revalidates():
    with pytest.raises(ConfigError):
        dataclasses.replace(config("default"), n_heads=5)


@pytest.mark.parametrize("d_model", [2, 8, 24, 64, 96, 128, 192, 200, 256, 384, 512, 768, 1000, 1024, 2048, 4096])
def test_d_ff_default_is_8_thirds_rounded_up_to_64(d_model):
    cfg = ModelConfig(d_model=d_model, n_heads=1)
    expected = math.ceil(Fraction(8 * d_model, 3) / 64) * 64
    assert cfg.ffn_dim == expected and expected % 64 == 0 and expected >= Fraction(8 * d_model, 3)
    assert ModelConfig(d_model=d_model, n_heads=1, d_ff=100).ffn_dim == 100


def test_defaults_follow_the_fields_they_derive_from():
    cfg = ModelConfig(d_model=256, n_heads=8)
    assert cfg.kv_heads == 8 and cfg.ffn_dim == 704 and cfg.head_dim == 32
    wider = dataclasses.replace(cfg, d_model=512, n_heads=16)  # unset d_ff / n_kv_heads resolve again
    assert wider.kv_heads == 16 and wider.ffn_dim == 1408
    block = TransformerLM(dataclasses.replace(wider, n_layers=1, vocab_size=8), device="meta").layers[0]
    assert block.ffn.down_proj.weight.shape == (512, 1408)
    assert block.attn.qkv_proj.weight.shape == (3 * 512, 512)


# -- parameter counts -----------------------------------------------------------------------------


def unique_param_count(model: TransformerLM, embeddings: bool) -> int:
    """By hand: every distinct tensor once; without embeddings, drop the table unless it is also the head."""
    seen = {id(p): p.numel() for _, p in model.named_parameters(remove_duplicate=False)}
    total = sum(seen.values())
    if not embeddings and not model.config.tie_embeddings:
        total -= model.embed.weight.numel()
    return total


def count_by_formula(cfg: ModelConfig, embeddings: bool) -> int:
    d, hd, V = cfg.d_model, cfg.head_dim, cfg.vocab_size
    per_layer = d * (cfg.n_heads + 2 * cfg.kv_heads) * hd + cfg.n_heads * hd * d + 3 * d * cfg.ffn_dim + 2 * d
    per_layer += 2 * hd if cfg.qk_norm else 0
    table, head = V * d, 0 if cfg.tie_embeddings else V * d
    # Without embeddings the lookup table goes; a tied table stays, as the LM head it also is.
    return cfg.n_layers * per_layer + d + head + (table if embeddings or cfg.tie_embeddings else 0)


@pytest.mark.parametrize("embeddings", [True, False])
@pytest.mark.parametrize("name", list(SHAPES))
def test_n_params_equals_module_count(name, embeddings):
    cfg = config(name)
    model = TransformerLM(cfg)
    expected = unique_param_count(model, embeddings)
    assert cfg.n_params(embeddings) == model.num_params(embeddings) == expected == count_by_formula(cfg, embeddings)
    meta = TransformerLM(cfg, device="meta")
    assert meta.num_params(embeddings) == expected


# -- FLOPs ----------------------------------------------------------------------------------------


def brute_force_attended(t: int, window: int | None) -> Fraction:
    return Fraction(int(ref.allowed(t, t, window).sum()), t)


@pytest.mark.parametrize("t", [1, 2, 3, 7, 16, 33])
@pytest.mark.parametrize("window", [None, 1, 2, 5, 16, 40])
def test_attended_keys_brute_force(t, window):
    cfg = ModelConfig(**{**BASE, "context_length": 64, "sliding_window": window})
    assert cfg.attended_keys(t) == pytest.approx(float(brute_force_attended(t, window)), rel=1e-15)
    full = ModelConfig(**{**BASE, "context_length": t, "sliding_window": window})
    assert full.attended_keys() == cfg.attended_keys(t)  # default: the whole context


@pytest.mark.parametrize("name", list(SHAPES))
def test_forward_flops_match_flop_counter(name):
    """FlopCounterMode counts every matmul of a real forward pass: the projections and LM head as `mm`, and the
    full (unmasked) QK^T and AV as `bmm`. Our count: the same projections, attention over attended keys only."""
    cfg = config(name, attention="naive")
    model = TransformerLM(cfg)
    batch, t = 2, cfg.context_length
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, cfg.vocab_size, (batch, t)))
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert set(by_op) == {"aten.mm", "aten.bmm"}, by_op
    H, hd, L = cfg.n_heads, cfg.head_dim, cfg.n_layers
    # The unmasked products, measured on naive_attention alone: 2 FLOPs x (QK^T + AV) x H x hd x t x t.
    with FlopCounterMode(display=False) as one:
        naive_attention(torch.randn(batch, H, t, hd), *[torch.randn(batch, cfg.kv_heads, t, hd)] * 2, cfg.sliding_window)
    assert one.get_total_flops() == 2 * 2 * H * hd * t * t * batch
    assert by_op["aten.bmm"] == L * one.get_total_flops()
    attention_per_token = L * 2 * 2 * H * hd * brute_force_attended(t, cfg.sliding_window)
    matmuls_per_token = Fraction(by_op["aten.mm"], batch * t)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, Linear))
    weights += model.embed.weight.numel() if cfg.tie_embeddings else 0  # the tied table is the LM head
    assert matmuls_per_token == 2 * weights  # one multiply-add per weight of every matmul
    assert cfg.forward_flops_per_token(t) == pytest.approx(float(matmuls_per_token + attention_per_token), rel=1e-14)
    assert cfg.forward_flops_per_token() == cfg.forward_flops_per_token(t)
    assert cfg.flops_per_token(t) == pytest.approx(3 * cfg.forward_flops_per_token(t), rel=1e-15)


def test_flops_shorter_sequences_and_windows():
    cfg = config("default", context_length=64)
    windowed = config("default", context_length=64, sliding_window=8)
    matmuls = cfg.forward_flops_per_token(1) - 2 * 2 * cfg.n_heads * cfg.head_dim * cfg.n_layers  # one key at t=1
    for t in (1, 8, 9, 64):
        attention = 2 * 2 * cfg.n_heads * cfg.head_dim * cfg.n_layers
        assert cfg.forward_flops_per_token(t) == pytest.approx(matmuls + attention * (t + 1) / 2, rel=1e-14)
        assert windowed.forward_flops_per_token(t) == pytest.approx(
            matmuls + attention * float(brute_force_attended(t, 8)), rel=1e-14)


# -- presets --------------------------------------------------------------------------------------


def model_presets() -> list:
    """Every preset with a model shape: files under configs/model/, or any preset with a [model] table."""
    root = configs_dir()
    found = []
    for path in sorted(root.rglob("*.toml")):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            data = {"model": {}}  # unreadable: keep it, so the test reports it
        if path.parent.name == "model" or isinstance(data.get("model"), dict):
            found.append(pytest.param(path, id=str(path.relative_to(root).with_suffix(""))))
    return found or [pytest.param(None, marks=pytest.mark.skip(reason=f"no model presets under {root} yet"))]


def advertised_size(stem: str) -> float | None:
    """`tinystories-17m` -> 17e6, `gpt-350m` -> 350e6, `cpu-tiny` -> None."""
    m = re.search(r"(?:^|-)(\d+(?:\.\d+)?)([mb])(?:-|$)", stem.lower())
    return None if m is None else float(m.group(1)) * (1e6 if m.group(2) == "m" else 1e9)


@pytest.mark.parametrize("path", model_presets())
def test_preset_model_sizes(path):
    data = load_config_file(path)
    table = data["model"] if isinstance(data.get("model"), dict) else data
    cfg = from_dict(ModelConfig, table)
    model = TransformerLM(cfg, device="meta")
    assert model.num_params() == cfg.n_params() and model.num_params(False) == cfg.n_params(False)
    assert all(p.is_meta for p in model.parameters())
    size = advertised_size(path.stem)
    if size is None:
        return
    # Presets advertise the total (GPT-2 124M, tied) or the non-embedding count (TinyStories 17M): either fits.
    counts = {"total": cfg.n_params(), "non-embedding": cfg.n_params(embeddings=False)}
    assert any(abs(n / size - 1) <= 0.15 for n in counts.values()), f"{path.name}: {counts} vs {size:.3g} +-15%"
