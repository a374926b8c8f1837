"""What the SFT, DPO and GRPO loops share: start from a checkpoint (chat tokens added), the optimizer and LR
schedule, gradient clipping, atomic checkpoints and resume, metrics.

The pretraining `Trainer` reads token files and owns its loop; fine-tuning needs other batches and losses,
so this composes the same pieces (build_optimizer, lr_scale_at, clip_grad_norm_, save_checkpoint, MetricsLog)
instead. A fine-tuned checkpoint is an ordinary scratchlm checkpoint (config["model"] is the resized model)
with the run's tokenizer in <out>/tokenizer, so `generate`, `eval` and the next stage load it as they load
any other.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from scratchlm.alignment.chat import prepare_chat_model
from scratchlm.atomic import write_text_atomic
from scratchlm.config import ConfigError, to_dict, write_run_info
from scratchlm.eval.logprobs import autocast_context
from scratchlm.model import TransformerLM
from scratchlm.optim import OptimizerConfig, ScheduleConfig, build_optimizer, clip_grad_norm_, lr_scale_at, set_lr
from scratchlm.tokenizer import Tokenizer
from scratchlm.train.checkpoint import load_checkpoint, load_trained_model, save_checkpoint, set_rng_state
from scratchlm.train.data import resolve_device
from scratchlm.train.loop import CHECKPOINT, autocast_dtype
from scratchlm.train.metrics import MetricsLog, truncate_metrics

log = logging.getLogger(__name__)
# Settings that may change when resuming; anything else must match the checkpoint's.
RESUMABLE_CHANGES = {"steps", "log_interval", "eval_interval", "checkpoint_interval", "device"}


@dataclass(kw_only=True)
class FinetuneConfig:
    base: str = field(default="", metadata={"help": "checkpoint (file or run folder) to start from"})
    out: str = field(default="runs/finetune", metadata={"help": "run folder: config, metrics, checkpoints"})
    steps: int = field(default=100, metadata={"help": "training steps"})
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-4, weight_decay=0.0))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup_steps=10, kind="constant"))
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto"})
    dtype: Literal["auto", "float32", "bfloat16"] = field(default="auto", metadata={"help": "compute dtype (autocast); auto = bfloat16 on CUDA"})
    seed: int = field(default=0, metadata={"help": "seed for data order and sampling"})
    log_interval: int = field(default=10, metadata={"help": "steps between progress lines"})
    eval_interval: int = field(default=50, metadata={"help": "steps between held-out evaluations (0: start and end only)"})
    checkpoint_interval: int = field(default=100, metadata={"help": "steps between checkpoints (0: only at the end)"})

    def __post_init__(self) -> None:
        for name in ("steps", "log_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("eval_interval", "checkpoint_interval"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


def load_chat_model(path: str | Path, device: torch.device) -> tuple[TransformerLM, Tokenizer]:
    """A checkpoint's model and tokenizer, with the chat tokens added (a no-op after SFT)."""
    trained = load_trained_model(path, device)
    if trained.tokenizer is None:
        raise ValueError(f"{path} has no tokenizer/ folder beside it: fine-tuning needs the model's tokenizer")
    return prepare_chat_model(trained.model, trained.tokenizer)


class Finetuner:
    """The policy being trained, its optimizer and its run folder. Loops call `apply_gradients` after their
    backward passes and advance `step` themselves (GRPO makes several optimizer steps per step)."""

    def __init__(self, cfg: FinetuneConfig, stage: str, resume: bool = False):
        self.cfg, self.stage, self.out = cfg, stage, Path(cfg.out)
        self.device = resolve_device(cfg.device)
        self.dtype = autocast_dtype(cfg.dtype, self.device)
        checkpoint = self.out / CHECKPOINT
        if checkpoint.exists() and not resume:
            raise ValueError(f"{self.out} already holds a run; pass --resume to continue it, or choose another --out")
        resuming = resume and checkpoint.exists()
        if not cfg.base and not resuming:
            raise ConfigError(f"{stage} needs a starting checkpoint: set --base")
        torch.manual_seed(cfg.seed)
        self.model, self.tokenizer = load_chat_model(checkpoint if resuming else cfg.base, self.device)
        self.model.train()
        self.optimizer = build_optimizer(self.model, cfg.optimizer)
        self.step = 0
        if resuming:
            self._resume(load_checkpoint(checkpoint, map_location=self.device))
        self.tokenizer.save(self.out / "tokenizer")
        write_run_info(self.out, cfg)
        self.metrics = MetricsLog(self.out)

    def _resume(self, state: dict[str, Any]) -> None:
        saved, now = state["config"].get(self.stage, {}), to_dict(self.cfg)
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in RESUMABLE_CHANGES)
        if changed:
            raise ValueError(f"cannot resume {self.out}: the config differs from the checkpoint's in {', '.join(changed)}")
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        self.step = state["step"]
        truncate_metrics(self.out, self.step)
        log.info("resuming %s at step %d", self.out, self.step)

    def autocast(self):
        return autocast_context(self.device, self.dtype)

    def apply_gradients(self) -> float:
        """Clip, step at the scheduled LR, zero the gradients; returns the gradient norm before clipping."""
        cfg = self.cfg
        set_lr(self.optimizer, lr_scale_at(self.step, cfg.steps, cfg.schedule))
        max_norm = cfg.optimizer.grad_clip if cfg.optimizer.grad_clip > 0 else math.inf
        grad_norm = clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def due(self, interval: int) -> bool:
        """Whether a periodic action falls on the current step (always at the last step)."""
        return self.step == self.cfg.steps or (interval > 0 and self.step % interval == 0)

    def save(self, **extra: Any) -> None:
        config = {"model": to_dict(self.model.config), "stage": self.stage, self.stage: to_dict(self.cfg)}
        save_checkpoint(self.out / CHECKPOINT, model=self.model, optimizer=self.optimizer, step=self.step,
                        config=config, tokenizer_sha256=self.tokenizer.hash, **extra)

    def close(self) -> None:
        self.metrics.close()

    def write_summary(self, seconds: float, **fields: Any) -> dict[str, Any]:
        """summary.json of the finished run (steps, wall seconds and the stage's own fields), returned too."""
        summary = {"steps": self.step, "seconds": seconds, **fields}
        write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary
