"""Training: token-file batches, the loop (`Trainer`, `train`), checkpoints and metrics."""

from scratchlm.train.checkpoint import load_checkpoint, save_checkpoint
from scratchlm.train.config import DataConfig, TrainConfig
from scratchlm.train.data import TokenData, resolve_device
from scratchlm.train.loop import Trainer, train

__all__ = ["DataConfig", "TokenData", "TrainConfig", "Trainer", "load_checkpoint", "resolve_device", "save_checkpoint", "train"]
