"""Learning-rate schedules as pure functions of the step, and applying one to an optimizer's param groups.

All schedules start with a linear warmup (Adam's second-moment estimate is noisy in the first steps, so full
steps there can blow up). Then:
  cosine:   half a cosine from the peak down to the floor (min_lr_ratio * peak) at total_steps;
  wsd:      warmup-stable-decay (Hu et al. 2024, MiniCPM): the peak until the last decay_fraction of the run,
            then linear to the floor; the stable phase can be extended without knowing the end in advance;
  constant: the peak.
After total_steps, cosine and wsd stay at the floor.
"""

from __future__ import annotations

import math
from typing import Any

from scratchlm.optim.config import ScheduleConfig


def lr_scale_at(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """The learning rate at `step` (0-based) as a fraction of the peak."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps  # step 0 already moves: lr = 0 would waste the step
    if cfg.kind == "constant":
        return 1.0
    if cfg.kind == "cosine":
        progress = _progress(step, cfg.warmup_steps, total_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    # wsd: the decay never starts before warmup ends, even when decay_fraction asks for more steps
    decay_start = max(cfg.warmup_steps, total_steps - round(cfg.decay_fraction * total_steps))
    return 1 - (1 - cfg.min_lr_ratio) * _progress(step, decay_start, total_steps)


def lr_at(step: int, total_steps: int, peak_lr: float, cfg: ScheduleConfig) -> float:
    """The learning rate at `step` (0-based) for a parameter group whose peak is peak_lr."""
    return peak_lr * lr_scale_at(step, total_steps, cfg)


def _progress(step: int, start: int, end: int) -> float:
    """Fraction of [start, end] done at step, clamped to [0, 1] (an empty interval counts as done)."""
    if end <= start:
        return 1.0
    return min(max((step - start) / (end - start), 0.0), 1.0)


def set_lr(optimizer: Any, lr_scale: float) -> None:
    """Set every param group's lr to its peak times lr_scale.

    The peak is the group's lr at the first call, remembered as `initial_lr` (the key torch's schedulers use,
    saved in the optimizer's state_dict): groups have different peaks (Muon vs AdamW), one scale fits all.
    `optimizer` is a torch Optimizer or anything with `param_groups` (CombinedOptimizer).
    """
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * lr_scale
