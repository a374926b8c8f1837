"""How the trainer runs on one or many ranks: one object that owns the wrapped model and the optimizer and
knows how to synchronise gradients, clip, and save / load full state for each parallel mode.

Checkpoints hold full state in the single-process layout (model state_dict with the unwrapped names), so
every checkpoint loads into `load_trained_model`, export and generation. Optimizer state: ddp and zero1
save the unsharded optimizer's state_dict (interchangeable with a single process); fsdp saves its flat
per-unit state (see fsdp.full_optimizer_state_dict), which only an fsdp run reads back.
"""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from scratchlm.config import ConfigError
from scratchlm.optim import AdamW, CombinedOptimizer, OptimizerConfig, build_optimizer, clip_grad_norm_
from scratchlm.optim.param_groups import uses_decay
from scratchlm.parallel.config import ParallelConfig
from scratchlm.parallel.ddp import DDP
from scratchlm.parallel.dist import world_size
from scratchlm.parallel.fsdp import FSDP, full_optimizer_state_dict, load_full_optimizer_state_dict
from scratchlm.parallel.zero import ZeroRedundancyOptimizer


class SingleProcess:
    """The model and optimizer as they are (also the base of the data-parallel strategies)."""

    supports_compile = True

    def __init__(self, module: nn.Module, model: nn.Module, optimizer: Any) -> None:
        self.module = module  # the unwrapped model
        self.model = model  # what forward runs through
        self.optimizer = optimizer

    def micro_step(self, sync: bool) -> AbstractContextManager:
        """Context of one micro-step's forward and backward; sync=False: accumulate without communicating."""
        return nullcontext()

    def finish_gradients(self) -> None:
        """After the last backward of a step: wait for gradient communication to complete."""

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        return clip_grad_norm_(self.module.parameters(), max_norm)

    def sampling_model(self) -> nn.Module:
        return self.module

    def model_state_dict(self) -> dict[str, Tensor] | None:
        """Collective in sharded modes; the full state_dict on rank 0 (None may come back elsewhere)."""
        return self.module.state_dict()

    def optimizer_state_dict(self) -> dict[str, Any] | None:
        return self.optimizer.state_dict()

    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


class DataParallel(SingleProcess):
    """ddp, ddp-bucketed and zero1: replicated model, gradients all-reduced by our DDP."""

    def __init__(self, module: nn.Module, optimizer_cfg: OptimizerConfig, bucket_size_mb: float | None, zero: bool):
        model = DDP(module, bucket_size_mb=bucket_size_mb)
        optimizer = build_optimizer(module, optimizer_cfg)
        super().__init__(module, model, shard_optimizer(optimizer) if zero else optimizer)

    def micro_step(self, sync: bool) -> AbstractContextManager:
        return nullcontext() if sync else self.model.no_sync()

    def finish_gradients(self) -> None:
        self.model.finish_gradient_synchronization()


class FullySharded(SingleProcess):
    """fsdp: every block a unit, the root holds embeddings, final norm and head; AdamW on the shards."""

    supports_compile = False  # the gather hooks and collectives inside forward break torch.compile's graphs

    def __init__(self, module: nn.Module, optimizer_cfg: OptimizerConfig, compute_dtype: torch.dtype):
        if optimizer_cfg.name != "adamw":
            raise ConfigError(f"parallel.mode=fsdp supports optimizer.name=adamw only (got {optimizer_cfg.name!r}): "
                              "Muon needs whole matrices, FSDP shards them")
        model = FSDP(module, units=getattr(module, "layers", ()), compute_dtype=compute_dtype,
                     group_fn=lambda name, p: "decay" if uses_decay(name, p) else "no_decay")
        shards = model.shards_by_group()
        groups = [{"params": shards[name], "weight_decay": wd, "name": name}
                  for name, wd in (("decay", optimizer_cfg.weight_decay), ("no_decay", 0.0)) if name in shards]
        optimizer = AdamW(groups, lr=optimizer_cfg.lr, betas=(optimizer_cfg.beta1, optimizer_cfg.beta2),
                          eps=optimizer_cfg.eps, weight_decay=optimizer_cfg.weight_decay)
        super().__init__(module, model, optimizer)

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        return self.model.clip_grad_norm_(max_norm)

    def sampling_model(self) -> nn.Module:
        return self.model  # forward must gather, on every rank

    def model_state_dict(self) -> dict[str, Tensor] | None:
        return self.model.full_state_dict()

    def optimizer_state_dict(self) -> dict[str, Any] | None:
        return full_optimizer_state_dict(self.model, self.optimizer)

    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        load_full_optimizer_state_dict(self.model, self.optimizer, state)


def shard_optimizer(optimizer: AdamW | CombinedOptimizer | torch.optim.Optimizer) -> Any:
    """The same optimizer(s) with state sharded over the ranks (ZeRO-1), built from its own param groups."""
    if isinstance(optimizer, CombinedOptimizer):
        return CombinedOptimizer([shard_optimizer(opt) for opt in optimizer.optimizers])
    # Hyperparameters travel in the groups; `defaults` may hold keys the constructor does not take (torch's
    # AdamW records `decoupled_weight_decay`), so pass on only those it does.
    accepted = inspect.signature(type(optimizer)).parameters
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return ZeroRedundancyOptimizer(optimizer.param_groups, type(optimizer), **defaults)


def build_strategy(module: nn.Module, optimizer_cfg: OptimizerConfig, cfg: ParallelConfig) -> SingleProcess:
    """The strategy for this process: single-process outside torchrun (or with one rank), else cfg.mode.
    `module` must be built identically on every rank (same seed), or at least on rank 0: ranks start from
    rank 0's weights."""
    if world_size() == 1:
        return SingleProcess(module, module, build_optimizer(module, optimizer_cfg))
    if cfg.mode == "fsdp":
        return FullySharded(module, optimizer_cfg, getattr(torch, cfg.fsdp_compute_dtype))
    bucket_size_mb = None if cfg.mode == "ddp" else cfg.bucket_size_mb
    return DataParallel(module, optimizer_cfg, bucket_size_mb, zero=cfg.mode == "zero1")
