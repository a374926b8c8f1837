"""Training math written from tensor ops: optimizers (AdamW, Muon), LR schedules, gradient clipping, losses.

`build_optimizer(model, OptimizerConfig)` assigns parameters to optimizers and weight-decay groups;
`set_lr(optimizer, lr_scale_at(step, total, ScheduleConfig))` follows the schedule each step.
"""

from scratchlm.optim.adamw import AdamW
from scratchlm.optim.clip import clip_grad_norm_
from scratchlm.optim.config import OptimizerConfig, ScheduleConfig
from scratchlm.optim.loss import bits_per_byte, cross_entropy, perplexity, token_losses
from scratchlm.optim.muon import Muon, zeropower_via_newtonschulz
from scratchlm.optim.param_groups import CombinedOptimizer, build_optimizer
from scratchlm.optim.schedule import lr_at, lr_scale_at, set_lr

__all__ = [
    "AdamW",
    "Muon",
    "CombinedOptimizer",
    "OptimizerConfig",
    "ScheduleConfig",
    "build_optimizer",
    "lr_at",
    "lr_scale_at",
    "set_lr",
    "clip_grad_norm_",
    "cross_entropy",
    "token_losses",
    "perplexity",
    "bits_per_byte",
    "zeropower_via_newtonschulz",
]
