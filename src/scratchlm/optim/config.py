"""Optimizer and learning-rate schedule configs (see scratchlm.config for how runs compose them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scratchlm.config import ConfigError

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd", "constant")


def _require(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok`: keeps each validation to one readable line."""
    if not ok:
        raise ConfigError(message)


@dataclass(kw_only=True)
class OptimizerConfig:
    name: Literal["adamw", "muon"] = field(
        default="adamw",
        metadata={"help": "adamw: AdamW for everything; muon: Muon for hidden 2-D weights, AdamW for the rest"},
    )
    lr: float = field(default=3e-4, metadata={"help": "peak learning rate of the AdamW parameters"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW decay rate of the gradient average"})
    beta2: float = field(default=0.95, metadata={"help": "AdamW decay rate of the squared-gradient average"})
    eps: float = field(default=1e-8, metadata={"help": "AdamW denominator epsilon"})
    weight_decay: float = field(
        default=0.1, metadata={"help": "AdamW decoupled weight decay (2-D non-embedding weights only)"}
    )
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient L2 norm to this (0 disables)"})
    muon_lr: float = field(default=0.02, metadata={"help": "peak learning rate of the Muon parameters"})
    muon_momentum: float = field(default=0.95, metadata={"help": "Muon momentum"})
    muon_ns_steps: int = field(default=5, metadata={"help": "Muon Newton-Schulz iterations per step"})
    muon_weight_decay: float = field(default=0.0, metadata={"help": "Muon decoupled weight decay"})

    def __post_init__(self) -> None:
        _require(self.name in OPTIMIZERS, f"optimizer name must be one of {list(OPTIMIZERS)}, got {self.name!r}")
        _require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _require(0 <= self.beta1 < 1, f"beta1 must be in [0, 1), got {self.beta1}")
        _require(0 <= self.beta2 < 1, f"beta2 must be in [0, 1), got {self.beta2}")
        _require(self.eps > 0, f"eps must be > 0, got {self.eps}")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _require(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        _require(self.muon_lr > 0, f"muon_lr must be > 0, got {self.muon_lr}")
        _require(0 <= self.muon_momentum < 1, f"muon_momentum must be in [0, 1), got {self.muon_momentum}")
        _require(self.muon_ns_steps >= 1, f"muon_ns_steps must be >= 1, got {self.muon_ns_steps}")
        _require(self.muon_weight_decay >= 0, f"muon_weight_decay must be >= 0, got {self.muon_weight_decay}")


@dataclass(kw_only=True)
class ScheduleConfig:
    kind: Literal["cosine", "wsd", "constant"] = field(
        default="cosine",
        metadata={"help": "cosine: decay to the floor; wsd: warmup-stable-decay; constant: peak after warmup"},
    )
    warmup_steps: int = field(default=100, metadata={"help": "steps of linear warmup from 0 to the peak"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final learning rate as a fraction of the peak"})
    decay_fraction: float = field(
        default=0.2, metadata={"help": "wsd: fraction of the total steps spent decaying linearly to the floor"}
    )

    def __post_init__(self) -> None:
        _require(self.kind in SCHEDULES, f"schedule kind must be one of {list(SCHEDULES)}, got {self.kind!r}")
        _require(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _require(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _require(0 <= self.decay_fraction <= 1, f"decay_fraction must be in [0, 1], got {self.decay_fraction}")
