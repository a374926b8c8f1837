"""Learning-rate schedules: warmup, cosine, WSD and constant, and set_lr over param groups."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.config import ConfigError
from scratchlm.optim import AdamW, ScheduleConfig, lr_at, lr_scale_at, set_lr

TOTAL = 1000


def scales(cfg: ScheduleConfig, steps: range) -> list[float]:
    return [lr_scale_at(step, TOTAL, cfg) for step in steps]


def is_monotone(values: list[float], increasing: bool) -> bool:
    pairs = zip(values, values[1:])
    return all(b >= a for a, b in pairs) if increasing else all(b <= a for a, b in pairs)


@pytest.mark.parametrize("kind", ["cosine", "wsd", "constant"])
def test_linear_warmup(kind: str) -> None:
    cfg = ScheduleConfig(kind=kind, warmup_steps=100)
    assert lr_at(0, TOTAL, 3e-4, cfg) == pytest.approx(3e-6)
    assert lr_at(49, TOTAL, 3e-4, cfg) == pytest.approx(1.5e-4)
    assert lr_at(99, TOTAL, 3e-4, cfg) == pytest.approx(3e-4)
    assert lr_at(100, TOTAL, 3e-4, cfg) == pytest.approx(3e-4)
    assert is_monotone(scales(cfg, range(0, 100)), increasing=True)


def test_no_warmup_starts_at_peak() -> None:
    assert lr_scale_at(0, TOTAL, ScheduleConfig(warmup_steps=0)) == 1.0


def test_cosine_midpoint_and_floor() -> None:
    cfg = ScheduleConfig(kind="cosine", warmup_steps=100, min_lr_ratio=0.1)
    midpoint = (100 + TOTAL) // 2
    assert lr_scale_at(midpoint, TOTAL, cfg) == pytest.approx(0.55)
    assert lr_scale_at(100 + (TOTAL - 100) // 4, TOTAL, cfg) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)
    assert lr_scale_at(TOTAL, TOTAL, cfg) == pytest.approx(0.1)
    assert lr_scale_at(TOTAL + 500, TOTAL, cfg) == pytest.approx(0.1)
    assert is_monotone(scales(cfg, range(100, TOTAL + 10)), increasing=False)
    assert lr_at(TOTAL, TOTAL, 0.02, cfg) == pytest.approx(0.002)


def test_wsd_plateau_then_linear_decay() -> None:
    cfg = ScheduleConfig(kind="wsd", warmup_steps=100, min_lr_ratio=0.0, decay_fraction=0.2)
    assert scales(cfg, range(100, 800)) == [1.0] * 700
    assert lr_scale_at(900, TOTAL, cfg) == pytest.approx(0.5)
    assert lr_scale_at(850, TOTAL, cfg) == pytest.approx(0.75)
    assert lr_scale_at(TOTAL, TOTAL, cfg) == pytest.approx(0.0)
    assert lr_scale_at(TOTAL + 1, TOTAL, cfg) == pytest.approx(0.0)
    decay = scales(cfg, range(800, TOTAL + 1))
    assert is_monotone(decay, increasing=False)
    steps = [b - a for a, b in zip(decay, decay[1:])]
    assert max(steps) == pytest.approx(min(steps))  # linear


def test_wsd_decay_never_starts_inside_warmup() -> None:
    cfg = ScheduleConfig(kind="wsd", warmup_steps=100, min_lr_ratio=0.1, decay_fraction=1.0)
    assert lr_scale_at(100, TOTAL, cfg) == pytest.approx(1.0)
    assert lr_scale_at(TOTAL, TOTAL, cfg) == pytest.approx(0.1)


def test_constant_stays_at_peak() -> None:
    cfg = ScheduleConfig(kind="constant", warmup_steps=10)
    assert scales(cfg, range(10, TOTAL * 2, 97)) == [1.0] * len(range(10, TOTAL * 2, 97))


def test_set_lr_scales_each_group_from_its_own_peak() -> None:
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 0.02}])
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 0.01])
    set_lr(opt, 0.1)  # relative to the peak, not to the current lr
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 0.002])
    assert [g["initial_lr"] for g in opt.param_groups] == [1e-3, 0.02]


@pytest.mark.parametrize(
    "kwargs", [{"kind": "linear"}, {"warmup_steps": -1}, {"min_lr_ratio": 1.5}, {"decay_fraction": -0.1}]
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        ScheduleConfig(**kwargs)
