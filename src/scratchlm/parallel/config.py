"""`ParallelConfig`: how a training run spreads over the ranks that torchrun started."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scratchlm.config import ConfigError

ParallelMode = Literal["ddp", "ddp-bucketed", "zero1", "fsdp"]


@dataclass(kw_only=True)
class ParallelConfig:
    mode: ParallelMode = field(
        default="ddp-bucketed",
        metadata={"help": "with more than one rank: ddp (one all-reduce per parameter), ddp-bucketed (one per "
                          "bucket), zero1 (ddp-bucketed + sharded optimizer state), fsdp (sharded parameters, "
                          "gradients and optimizer state); ignored in a single process"})
    bucket_size_mb: float = field(default=25.0, metadata={"help": "ddp-bucketed/zero1: gradient bucket size in MiB"})
    fsdp_compute_dtype: Literal["float32", "bfloat16"] = field(
        default="float32", metadata={"help": "fsdp: dtype the gathered parameters are computed in (shards stay float32)"})
    timeout_s: float = field(
        default=600.0, metadata={"help": "seconds a collective may wait for the other ranks before the run fails"})

    def __post_init__(self) -> None:
        if self.bucket_size_mb <= 0:
            raise ConfigError(f"parallel.bucket_size_mb must be > 0, got {self.bucket_size_mb}")
        if self.timeout_s <= 0:
            raise ConfigError(f"parallel.timeout_s must be > 0, got {self.timeout_s}")
