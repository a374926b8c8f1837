"""The training loop: `Trainer(cfg).fit()`.

One step = `grad_accum` micro-batches (forward + loss + backward under autocast), global-norm clipping,
the optimizer step at the scheduled LR. Every `log_interval` steps a progress line and a metrics record;
every `eval_interval` a validation loss; every `checkpoint_interval` an atomic checkpoint. `resume=True`
continues from the run folder's checkpoint so that the rest of the run equals an uninterrupted one.

Under torchrun every rank runs the same loop on its own batches (drawn by (seed, rank, step)); the
strategy (scratchlm.parallel) wraps the model and optimizer for cfg.parallel.mode, and only rank 0 reports,
writes metrics and checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scratchlm.atomic import write_text_atomic
from scratchlm.config import ConfigError, to_dict, write_run_info
from scratchlm.inference import generate_batch
from scratchlm.model import TransformerLM
from scratchlm.optim import cross_entropy, lr_scale_at, perplexity, set_lr
from scratchlm.parallel.dist import all_reduce_mean, is_rank0, rank, rank_device, world_size
from scratchlm.parallel.strategy import build_strategy
from scratchlm.tokenizer import Tokenizer
from scratchlm.train.checkpoint import load_checkpoint, load_model_state, save_checkpoint, set_rng_state
from scratchlm.train.config import TrainConfig
from scratchlm.train.data import TokenData, resolve_device
from scratchlm.train.metrics import MetricsLog, peak_flops, step_line, truncate_metrics

log = logging.getLogger(__name__)

CHECKPOINT, BEST = "checkpoint.pt", "best.pt"
# Settings that may change when resuming (how long, how often); anything else must match the checkpoint.
RESUMABLE_CHANGES = {"steps", "log_interval", "eval_interval", "eval_batches", "checkpoint_interval", "sample_tokens",
                     "sample_prompt", "tensorboard", "compile", "device", "keep_best", "parallel"}


def autocast_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = rank_device(resolve_device(cfg.device))
        self.rank, self.world_size, self.is_rank0 = rank(), world_size(), is_rank0()
        self.dtype = autocast_dtype(cfg.dtype, self.device)
        state = self._checkpoint_to_resume(resume)
        if not cfg.data.train:
            raise ConfigError("no training data: set data.train to a token file (from `scratchlm tokenizer encode`)")
        self.train_data = TokenData(cfg.data.train, cfg.seq_len)
        self.tokenizer_sha256 = self.train_data.meta["tokenizer_sha256"]
        self.val_data = TokenData(cfg.data.val, cfg.seq_len, self.tokenizer_sha256) if cfg.data.val else None
        if self.train_data.vocab_size > cfg.model.vocab_size:
            raise ConfigError(f"{cfg.data.train} was encoded with a {self.train_data.vocab_size}-token vocabulary but "
                              f"model.vocab_size is {cfg.model.vocab_size}")
        self.tokenizer = self._tokenizer()

        torch.manual_seed(cfg.seed)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # float32 runs use TF32 tensor cores
            torch.backends.cudnn.allow_tf32 = True
        model = TransformerLM(cfg.model, device=self.device)
        if state is not None:
            load_model_state(model, state["model"], self.out / CHECKPOINT)
        self.n_params = model.num_params()
        self.strategy = build_strategy(model, cfg.optimizer, cfg.parallel)
        self.model, self.optimizer = self.strategy.model, self.strategy.optimizer
        self.step, self.best_val_loss = 0, math.inf
        if state is not None:
            self.strategy.load_optimizer_state_dict(state["optimizer"])
            set_rng_state(state["rng"])
            self.step, self.best_val_loss = state["step"], state.get("best_val_loss", math.inf)
            if self.is_rank0:
                truncate_metrics(self.out, self.step)
            log.info("resuming %s at step %d", self.out, self.step)
        if cfg.compile and not self.strategy.supports_compile:
            log.warning("compile is off: parallel.mode=%s does not support torch.compile", cfg.parallel.mode)
        self.loss_fn = torch.compile(self._loss) if cfg.compile and self.strategy.supports_compile else self._loss
        self.tokens_per_step = cfg.tokens_per_step * self.world_size  # over all ranks
        self.flops_per_token = cfg.model.flops_per_token(cfg.seq_len)
        self.peak_flops = peak_flops(self.device, self.dtype)
        if self.is_rank0:
            write_run_info(self.out, cfg)

    # -- setup ------------------------------------------------------------------------------------------

    def _checkpoint_to_resume(self, resume: bool) -> dict[str, Any] | None:
        path = self.out / CHECKPOINT
        if not path.exists():
            return None
        if not resume:
            raise ValueError(f"{self.out} already holds a run with a checkpoint; pass --resume to continue it, "
                             "or choose another --out")
        state = load_checkpoint(path)
        saved, now = state["config"], to_dict(self.cfg)
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in RESUMABLE_CHANGES)
        if changed:
            raise ValueError(f"cannot resume {self.out}: the config differs from the checkpoint's in {', '.join(changed)}")
        saved_layout = (state.get("world_size", 1), state.get("optimizer_layout", "standard"))
        if saved_layout != (self.world_size, self._optimizer_layout()):
            raise ValueError(f"cannot resume {self.out}: it was saved by {saved_layout[0]} rank(s) with the "
                             f"{saved_layout[1]} optimizer layout; run it on {saved_layout[0]} rank(s) "
                             f"({'with' if saved_layout[1] == 'fsdp' else 'without'} --parallel fsdp)")
        return state

    def _optimizer_layout(self) -> str:
        """fsdp checkpoints its optimizer state per flat shard, every other mode as the unsharded optimizer."""
        return "fsdp" if self.world_size > 1 and self.cfg.parallel.mode == "fsdp" else "standard"

    def _tokenizer(self) -> Tokenizer | None:
        """The run's tokenizer, copied into the run folder so that the checkpoint is self-contained."""
        run_copy = self.out / "tokenizer"
        source = self.cfg.data.tokenizer or (run_copy if run_copy.is_dir() else None)
        if source is None:
            return None
        tok = Tokenizer.load(source)
        if tok.hash != self.tokenizer_sha256:
            raise ValueError(f"tokenizer {source} is not the one {self.cfg.data.train} was encoded with")
        if Path(source).resolve() != run_copy.resolve() and self.is_rank0:
            tok.save(run_copy)
        return tok

    # -- steps ------------------------------------------------------------------------------------------

    def _loss(self, x: Tensor, y: Tensor) -> Tensor:
        autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
        with autocast:
            logits = self.model(x)
        return cross_entropy(logits, y, z_loss_weight=self.cfg.z_loss_weight)

    def train_step(self) -> tuple[Tensor, Tensor]:
        """One optimizer step; returns (mean loss, grad norm before clipping) as device tensors (no host sync)."""
        cfg = self.cfg
        set_lr(self.optimizer, lr_scale_at(self.step, cfg.steps, cfg.schedule))
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            x, y = self.train_data.batch(cfg.batch_size, self.device, seed=cfg.seed, step=self.step, micro_step=micro,
                                         rank=self.rank)
            with self.strategy.micro_step(sync=micro == cfg.grad_accum - 1):  # gradients reduced once per step
                loss = self.loss_fn(x, y)
                (loss / cfg.grad_accum).backward()
            total += loss.detach()
        self.strategy.finish_gradients()
        max_norm = cfg.optimizer.grad_clip if cfg.optimizer.grad_clip > 0 else math.inf
        grad_norm = self.strategy.clip_grad_norm_(max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total / cfg.grad_accum, grad_norm

    @torch.no_grad()
    def evaluate(self, max_batches: int | None = None) -> dict[str, float]:
        """Mean validation loss over the first `max_batches` batches of the validation file, in order."""
        assert self.val_data is not None
        self.model.eval()
        total, count = torch.zeros((), device=self.device, dtype=torch.float64), 0
        for x, y in self.val_data.eval_batches(self.cfg.batch_size, self.device, max_batches or self.cfg.eval_batches):
            total += self.loss_fn(x, y).double() * y.numel()
            count += y.numel()
        self.model.train()
        loss = float(total) / count
        return {"loss": loss, "perplexity": perplexity(loss),
                "bits_per_byte": loss / math.log(2) / self.val_data.bytes_per_token}

    # -- the run ----------------------------------------------------------------------------------------

    def fit(self, report: Callable[[str], None] = print) -> dict[str, Any]:
        """Train to `cfg.steps`; returns the run summary (also written to summary.json by rank 0).
        Every rank runs it (they meet in collectives); only rank 0 reports and writes metrics."""
        cfg = self.cfg
        if not self.is_rank0:
            report = _silent
        metrics = MetricsLog(self.out, cfg.tensorboard) if self.is_rank0 else None
        ranks = f" x {self.world_size} ranks ({cfg.parallel.mode})" if self.world_size > 1 else ""
        report(f"model: {self.n_params / 1e6:.2f}M parameters, {self.flops_per_token / 1e6:.1f} MFLOP/token; "
               f"{self.tokens_per_step:,} tokens/step on {self.device}{ranks} ({str(self.dtype).removeprefix('torch.')})")
        start_step, t_start = self.step, time.perf_counter()
        losses: list[Tensor] = []
        t_last, last_step, val = time.perf_counter(), self.step, None
        try:
            while self.step < cfg.steps:
                loss, grad_norm = self.train_step()
                losses.append(loss)
                if self.step % cfg.log_interval == 0 or self.step == cfg.steps:
                    now = time.perf_counter()
                    record = self._train_record(losses, grad_norm, self.step - last_step, now - t_last)
                    if metrics:
                        metrics.log(record)
                    report(step_line(record, cfg.steps))
                    losses, t_last, last_step = [], now, self.step
                if self.val_data is not None and (self.step == cfg.steps or (cfg.eval_interval and self.step % cfg.eval_interval == 0)):
                    t_eval = self._synchronized_time()
                    val = self.evaluate()
                    if metrics:
                        metrics.log({"step": self.step, "split": "val", **val})
                    self._keep_if_best(val["loss"])
                    report(f"step {self.step}: val loss {val['loss']:.4f} | ppl {val['perplexity']:.2f} | "
                           f"{val['bits_per_byte']:.3f} bits/byte")
                    t_last += time.perf_counter() - t_eval  # evaluation time is not training throughput
                if self.step == cfg.steps or (cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0):
                    t_save = self._synchronized_time()
                    self.save()
                    t_last += time.perf_counter() - t_save
        finally:
            if metrics:
                metrics.close()
        if val is None and self.val_data is not None:  # resumed a finished run: report where it ended
            val = self.evaluate()
        summary = {"steps": self.step, "tokens": self.step * self.tokens_per_step,
                   "seconds": time.perf_counter() - t_start, "resumed_from": start_step or None,
                   "val": val, "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
                   "sample": self.sample()}
        if self.is_rank0:
            write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    def _synchronized_time(self) -> float:
        """perf_counter once queued GPU work is done, so that pauses do not absorb training time."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _train_record(self, losses: list[Tensor], grad_norm: Tensor, steps: int, seconds: float) -> dict[str, Any]:
        cfg = self.cfg
        tokens_per_second = steps * self.tokens_per_step / seconds
        record = {
            "step": self.step, "split": "train",
            "loss": float(all_reduce_mean(torch.stack(losses).mean())),  # the one host sync per log interval
            "lr": max(g["lr"] for g in self.optimizer.param_groups),
            "grad_norm": float(grad_norm),
            "tokens": self.step * self.tokens_per_step,
            "tokens_per_second": tokens_per_second,
            "mfu": (self.flops_per_token * tokens_per_second / (self.peak_flops * self.world_size)  # per GPU
                    if self.peak_flops else None),
            "memory_gib": torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None,
            "eta_seconds": (cfg.steps - self.step) * seconds / steps,
        }
        return record

    def save(self) -> None:
        """Full state gathered on rank 0, which writes it (collective: every rank calls it)."""
        model, optimizer = self.strategy.model_state_dict(), self.strategy.optimizer_state_dict()
        if self.is_rank0:
            save_checkpoint(self.out / CHECKPOINT, model=model, optimizer=optimizer, step=self.step,
                            config=to_dict(self.cfg), tokenizer_sha256=self.tokenizer_sha256,
                            best_val_loss=self.best_val_loss, world_size=self.world_size,
                            optimizer_layout=self._optimizer_layout())

    def _keep_if_best(self, val_loss: float) -> None:
        """Weights only (no optimizer state) of the best validation loss so far: small runs on little data
        overfit, and the end of a run is then not its best point."""
        if not self.cfg.keep_best or val_loss >= self.best_val_loss:
            return
        self.best_val_loss = val_loss
        model = self.strategy.model_state_dict()  # every rank: gathering may be collective
        if self.is_rank0:
            save_checkpoint(self.out / BEST, model=model, optimizer=None, step=self.step, config=to_dict(self.cfg),
                            tokenizer_sha256=self.tokenizer_sha256, val_loss=val_loss)

    def sample(self) -> str | None:
        if self.tokenizer is None or not self.cfg.sample_tokens:
            return None
        eot = self.tokenizer.special_ids.get("<|endoftext|>")
        prompt = self.tokenizer.encode(self.cfg.sample_prompt)
        room = self.cfg.model.context_length - len(prompt)
        if room <= 0:
            return None
        ids = generate_batch(self.strategy.sampling_model(), [prompt], min(self.cfg.sample_tokens, room), temperature=0.8, top_p=0.95,
                             seed=self.cfg.seed, stop_ids=[eot] if eot is not None else [])[0]
        return self.cfg.sample_prompt + self.tokenizer.decode([t for t in ids if t != eot])


def _silent(_: str) -> None:
    """The report of ranks other than 0."""


def train(cfg: TrainConfig, resume: bool = False, report: Callable[[str], None] = print) -> dict[str, Any]:
    return Trainer(cfg, resume=resume).fit(report)


__all__ = ["Trainer", "train", "autocast_dtype", "CHECKPOINT", "BEST"]
