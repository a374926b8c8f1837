"""Data and sharded parallelism written on torch.distributed: parallelism wraps the single-device model
and its optimizer from outside (the model never imports this package).

- `DDP`: gradients all-reduced during backward, per parameter or in buckets (ddp.py)
- `ZeroRedundancyOptimizer`: optimizer state sharded over the ranks, ZeRO-1 (zero.py)
- `FSDP`: parameters, gradients and optimizer state sharded per unit, ZeRO-3 style (fsdp.py)
- `build_strategy`: what the trainer uses for each `ParallelConfig.mode` (strategy.py)
- process-group setup from torchrun's environment (dist.py) and `launch` for `scratchlm train --nproc N`
"""

from scratchlm.parallel.config import ParallelConfig
from scratchlm.parallel.ddp import DDP
from scratchlm.parallel.dist import distributed, is_rank0, rank, world_size
from scratchlm.parallel.fsdp import FSDP, full_optimizer_state_dict, load_full_optimizer_state_dict
from scratchlm.parallel.launch import launch
from scratchlm.parallel.strategy import build_strategy, shard_optimizer
from scratchlm.parallel.zero import ZeroRedundancyOptimizer, partition_params

__all__ = [
    "DDP", "FSDP", "ParallelConfig", "ZeroRedundancyOptimizer", "build_strategy", "distributed",
    "full_optimizer_state_dict", "is_rank0", "launch", "load_full_optimizer_state_dict", "partition_params",
    "rank", "shard_optimizer", "world_size",
]
