"""`TrainConfig`: everything a training run needs, composed of the model, optimizer, schedule and data configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scratchlm.config import ConfigError
from scratchlm.model.config import ModelConfig
from scratchlm.optim.config import OptimizerConfig, ScheduleConfig
from scratchlm.parallel.config import ParallelConfig


@dataclass(kw_only=True)
class DataConfig:
    train: str = field(default="", metadata={"help": "training token file (from `scratchlm tokenizer encode`)"})
    val: str | None = field(default=None, metadata={"help": "validation token file (default: none, no validation)"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer folder: copied into the run for sampling and generation"})


@dataclass(kw_only=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    out: str = field(default="runs/train", metadata={"help": "run folder: config, metrics, checkpoints"})
    steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "sequences per micro-batch (per rank)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto"})
    dtype: Literal["auto", "float32", "bfloat16"] = field(default="auto", metadata={"help": "compute dtype (autocast); auto = bfloat16 on CUDA, float32 elsewhere"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the forward and loss"})
    z_loss_weight: float = field(default=0.0, metadata={"help": "weight of the z-loss (log Z)^2 that keeps logits from drifting"})
    seed: int = field(default=0, metadata={"help": "seed for initialisation and batch order"})
    log_interval: int = field(default=10, metadata={"help": "steps between progress lines"})
    eval_interval: int = field(default=100, metadata={"help": "steps between validation losses (0: only at the end)"})
    eval_batches: int = field(default=20, metadata={"help": "validation batches per evaluation"})
    checkpoint_interval: int = field(default=500, metadata={"help": "steps between checkpoints (0: only at the end)"})
    keep_best: bool = field(default=True, metadata={"help": "also keep the weights with the lowest validation loss in best.pt"})
    sample_tokens: int = field(default=64, metadata={"help": "tokens to sample at the end (0: none; needs data.tokenizer)"})
    sample_prompt: str = field(default="Once upon a time", metadata={"help": "prompt of the final sample"})
    tensorboard: bool = field(default=False, metadata={"help": "also log to TensorBoard (needs the tensorboard package)"})

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_interval", "eval_batches"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("eval_interval", "checkpoint_interval", "sample_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.z_loss_weight < 0:
            raise ConfigError(f"z_loss_weight must be >= 0, got {self.z_loss_weight}")

    @property
    def seq_len(self) -> int:
        return self.model.context_length

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step on one rank (a data-parallel run multiplies by its number of ranks)."""
        return self.batch_size * self.grad_accum * self.seq_len
