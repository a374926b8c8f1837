"""Supervised fine-tuning on (prompt, response) pairs in the chat template, loss on response tokens only.

Examples are encoded with their response mask, packed into rows of seq_len + 1 tokens (scratchlm.alignment.data
explains the masking across boundaries), and trained with the cross-entropy of the pretraining loss, whose
ignored targets are every prompt, padding and boundary position: the mean NLL of the response tokens, which is
-mean(response_logprobs) over the mask (a test holds the two equal). With grad_accum > 1 each micro-batch's
mean is weighted equally, as in pretraining.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from scratchlm.alignment.chat import encode_example
from scratchlm.alignment.data import Packed, load_sft_pairs, pack_examples, split_holdout
from scratchlm.alignment.finetune import FinetuneConfig, Finetuner
from scratchlm.config import ConfigError
from scratchlm.optim import cross_entropy, perplexity

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class SFTConfig(FinetuneConfig):
    out: str = field(default="runs/sft", metadata={"help": "run folder: config, metrics, checkpoints"})
    data: list[str] = field(default_factory=lambda: ["alignment/sft_sample.jsonl"],
                            metadata={"help": "JSONL files (paths, or relative to the data folder): prompt/response, "
                                              "instruction/output, Self-Instruct seeds or GSM8K question/answer"})
    max_examples: int | None = field(default=None, metadata={"help": "examples read per file (default: all)"})
    seq_len: int | None = field(default=None, metadata={"help": "tokens per packed row (default: the model's context)"})
    pack: bool = field(default=True, metadata={"help": "pack several examples per row (else one per row, padded)"})
    batch_size: int = field(default=8, metadata={"help": "rows per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    val_fraction: float = field(default=0.05, metadata={"help": "share of examples held out for validation loss"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size <= 0 or self.grad_accum <= 0:
            raise ConfigError("batch_size and grad_accum must be positive")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not self.data:
            raise ConfigError("sft needs data: one or more JSONL files")


def epoch_rows(n_rows: int, batch_size: int, seed: int, index: int) -> torch.Tensor:
    """Row ids of batch `index`: batches walk seeded per-epoch permutations, so batch i is a function of
    (seed, i) alone and a resumed run sees the same batches as an uninterrupted one."""
    positions = torch.arange(index * batch_size, (index + 1) * batch_size)
    rows = torch.empty(batch_size, dtype=torch.long)
    for epoch in positions.div(n_rows, rounding_mode="floor").unique().tolist():
        perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        here = positions.div(n_rows, rounding_mode="floor") == epoch
        rows[here] = perm[positions[here] % n_rows]
    return rows


def sft_loss(model: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean NLL over the response targets. tokens: (B, T+1) packed rows; targets: (B, T) with -100 elsewhere."""
    return cross_entropy(model(tokens[:, :-1]), targets)


class SFT:
    def __init__(self, cfg: SFTConfig, resume: bool = False):
        self.cfg = cfg
        self.ft = Finetuner(cfg, "sft", resume)
        seq_len = cfg.seq_len or self.ft.model.config.context_length
        if seq_len > self.ft.model.config.context_length:
            raise ConfigError(f"seq_len {seq_len} exceeds the model's context_length {self.ft.model.config.context_length}")
        pairs = load_sft_pairs(cfg.data, cfg.max_examples)
        train_pairs, val_pairs = split_holdout(pairs, cfg.val_fraction, cfg.seed)
        encode = lambda ps: [encode_example(self.ft.tokenizer, p, r) for p, r in ps]  # noqa: E731
        self.train = pack_examples(encode(train_pairs), seq_len, pack=cfg.pack)
        self.val = pack_examples(encode(val_pairs), seq_len, pack=cfg.pack) if val_pairs else None
        self.data_stats = {"examples": len(pairs), "train_examples": len(train_pairs), "val_examples": len(val_pairs),
                           "train_rows": len(self.train.tokens), "truncated": self.train.truncated,
                           "response_tokens": int(self.train.mask[:, 1:].sum()), "seq_len": seq_len}
        log.info("sft data: %s", self.data_stats)

    def _batch(self, packed: Packed, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.ft.device
        return packed.tokens[rows].to(device), packed.targets()[rows].to(device)

    def train_step(self) -> tuple[float, float]:
        cfg, ft = self.cfg, self.ft
        total = 0.0
        for micro in range(cfg.grad_accum):
            rows = epoch_rows(len(self.train.tokens), cfg.batch_size, cfg.seed, ft.step * cfg.grad_accum + micro)
            tokens, targets = self._batch(self.train, rows)
            with ft.autocast():
                loss = sft_loss(ft.model, tokens, targets)
            (loss / cfg.grad_accum).backward()
            total += float(loss.detach()) / cfg.grad_accum
        grad_norm = ft.apply_gradients()
        ft.step += 1
        return total, grad_norm

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Token-weighted mean response NLL on the held-out examples."""
        assert self.val is not None
        ft = self.ft
        ft.model.eval()
        nll, count = 0.0, 0
        for start in range(0, len(self.val.tokens), self.cfg.batch_size):
            rows = torch.arange(start, min(start + self.cfg.batch_size, len(self.val.tokens)))
            tokens, targets = self._batch(self.val, rows)
            n = int((targets != -100).sum())
            with ft.autocast():
                nll += float(sft_loss(ft.model, tokens, targets)) * n
            count += n
        ft.model.train()
        loss = nll / max(count, 1)
        return {"loss": loss, "perplexity": perplexity(loss), "tokens": count}

    def fit(self, report: Callable[[str], None] = print) -> dict[str, Any]:
        cfg, ft = self.cfg, self.ft
        t0, val, first_val = time.perf_counter(), None, None
        if self.val is not None and ft.step == 0:
            first_val = self.evaluate()
            ft.metrics.log({"step": 0, "split": "val", **first_val})
            report(f"step 0: val loss {first_val['loss']:.4f}")
        try:
            while ft.step < cfg.steps:
                loss, grad_norm = self.train_step()
                if ft.due(cfg.log_interval):
                    ft.metrics.log({"step": ft.step, "split": "train", "loss": loss, "grad_norm": grad_norm, "lr": ft.lr})
                    report(f"step {ft.step}/{cfg.steps} | loss {loss:.4f} | lr {ft.lr:.2e} | gnorm {grad_norm:.2f}")
                if self.val is not None and ft.due(cfg.eval_interval):
                    val = self.evaluate()
                    ft.metrics.log({"step": ft.step, "split": "val", **val})
                    report(f"step {ft.step}: val loss {val['loss']:.4f} | ppl {val['perplexity']:.2f}")
                if ft.due(cfg.checkpoint_interval):
                    ft.save()
        finally:
            ft.close()
        return ft.write_summary(time.perf_counter() - t0, data=self.data_stats, val_start=first_val, val=val)


def sft(cfg: SFTConfig, resume: bool = False, report: Callable[[str], None] = print) -> dict[str, Any]:
    return SFT(cfg, resume).fit(report)
