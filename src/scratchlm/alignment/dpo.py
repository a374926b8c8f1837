"""Direct Preference Optimization (Rafailov et al. 2023):

    loss = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

The reference is the starting model, frozen. Its log-probabilities never change, so they are computed once
per pair before training, saved in the run folder (reference_logps.pt) and the reference model is freed:
training then holds one model, not two. Implicit rewards are beta * (log pi - log ref); the held-out
metrics are their margin and how often the chosen reply wins (ties count half).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from scratchlm.alignment.chat import encode_example
from scratchlm.alignment.data import PreferencePair, load_hh_pairs, split_holdout
from scratchlm.alignment.finetune import FinetuneConfig, Finetuner, load_chat_model
from scratchlm.alignment.sft import epoch_rows
from scratchlm.atomic import atomic_path
from scratchlm.config import ConfigError
from scratchlm.eval.logprobs import pad_batch, response_logprobs
from scratchlm.tokenizer import Tokenizer

log = logging.getLogger(__name__)
REFERENCE_LOGPS = "reference_logps.pt"


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair (loss, chosen reward, rejected reward), all (B,), from summed response log-probs (B,)."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen_reward - rejected_reward), chosen_reward.detach(), rejected_reward.detach()


def fit_example(ids: list[int], mask: list[bool], width: int) -> tuple[list[int], list[bool]]:
    """At most `width` tokens: the prompt loses its start (down to half the width), then the response its end."""
    if len(ids) <= width:
        return ids, mask
    n_prompt = mask.index(True)
    keep_response = min(len(ids) - n_prompt, width - min(n_prompt, width // 2))
    keep_prompt = width - keep_response
    lo = n_prompt - keep_prompt
    return ids[lo : n_prompt + keep_response], mask[lo : n_prompt + keep_response]


def encode_pairs(tokenizer: Tokenizer, pairs: list[PreferencePair], width: int) -> list[tuple[tuple, tuple]]:
    """Per pair: ((chosen ids, mask), (rejected ids, mask)), each fit to `width` tokens."""
    return [(fit_example(*encode_example(tokenizer, p.prompt, p.chosen), width),
             fit_example(*encode_example(tokenizer, p.prompt, p.rejected), width)) for p in pairs]


def pair_logps(model: torch.nn.Module, encoded: list[tuple[tuple, tuple]], device: torch.device) -> tuple[Tensor, Tensor]:
    """log pi(chosen|x), log pi(rejected|x), each (B,): one forward over the 2B sequences."""
    seqs = [e[0][0] for e in encoded] + [e[1][0] for e in encoded]
    masks = [e[0][1] for e in encoded] + [e[1][1] for e in encoded]
    ids, mask = pad_batch(seqs, masks, device=device)
    logprobs, _ = response_logprobs(model, ids, mask)
    total = logprobs.sum(-1)  # (2B,)
    return total[: len(encoded)], total[len(encoded) :]


@dataclass(kw_only=True)
class DPOConfig(FinetuneConfig):
    out: str = field(default="runs/dpo", metadata={"help": "run folder: config, metrics, checkpoints"})
    data: str = field(default="alignment/hh_rlhf_harmless_base_test.jsonl.gz", metadata={"help": "Anthropic HH-RLHF JSONL(.gz) of chosen/rejected dialogues"})
    max_pairs: int | None = field(default=None, metadata={"help": "pairs read from the file (default: all)"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of pairs held out for the accuracy and margin metrics"})
    beta: float = field(default=0.1, metadata={"help": "DPO temperature: strength of the tie to the reference"})
    batch_size: int = field(default=8, metadata={"help": "pairs per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_len: int | None = field(default=None, metadata={"help": "tokens per sequence (default: the model's context + 1)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0 or self.batch_size <= 0 or self.grad_accum <= 0:
            raise ConfigError("beta, batch_size and grad_accum must be positive")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


class DPO:
    def __init__(self, cfg: DPOConfig, resume: bool = False):
        self.cfg = cfg
        self.ft = Finetuner(cfg, "dpo", resume)
        pairs, skipped = load_hh_pairs(cfg.data, cfg.max_pairs)
        if len(pairs) < 2:
            raise ValueError(f"{cfg.data}: fewer than 2 usable preference pairs")
        train, val = split_holdout(pairs, cfg.val_fraction, cfg.seed)
        width = cfg.max_len or self.ft.model.config.context_length + 1
        self.train = encode_pairs(self.ft.tokenizer, train, width)
        self.val = encode_pairs(self.ft.tokenizer, val, width)
        self.data_stats = {"pairs": len(pairs), "skipped": skipped, "train_pairs": len(train), "val_pairs": len(val)}
        log.info("dpo data: %s", self.data_stats)
        self.ref_train, self.ref_val = self._reference_logps()

    @torch.no_grad()
    def _reference_logps(self) -> tuple[Tensor, Tensor]:
        """(train (N, 2), val (M, 2)) reference log-probs of (chosen, rejected): loaded from the run folder, or
        computed once with the frozen starting model, which is then dropped."""
        path = self.ft.out / REFERENCE_LOGPS
        key = {"base": self.cfg.base, "data": self.cfg.data, "max_pairs": self.cfg.max_pairs, "seed": self.cfg.seed,
               "val_fraction": self.cfg.val_fraction, "max_len": self.cfg.max_len}
        if path.is_file():
            cached = torch.load(path, weights_only=True)
            if cached["key"] == key:
                return cached["train"], cached["val"]
        reference, _ = load_chat_model(self.cfg.base, self.ft.device)
        out = []
        for encoded in (self.train, self.val):
            rows = []
            for start in range(0, len(encoded), self.cfg.batch_size):
                with self.ft.autocast():
                    chosen, rejected = pair_logps(reference, encoded[start : start + self.cfg.batch_size], self.ft.device)
                rows.append(torch.stack([chosen, rejected], dim=1).float().cpu())
            out.append(torch.cat(rows))
        with atomic_path(path) as tmp:
            torch.save({"key": key, "train": out[0], "val": out[1]}, tmp)
        return out[0], out[1]

    def train_step(self) -> dict[str, float]:
        cfg, ft = self.cfg, self.ft
        sums = {"loss": 0.0, "reward_accuracy": 0.0, "reward_margin": 0.0}
        for micro in range(cfg.grad_accum):
            rows = epoch_rows(len(self.train), cfg.batch_size, cfg.seed, ft.step * cfg.grad_accum + micro).tolist()
            ref = self.ref_train[rows].to(ft.device)  # (B, 2)
            with ft.autocast():
                chosen, rejected = pair_logps(ft.model, [self.train[i] for i in rows], ft.device)
            loss, r_chosen, r_rejected = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], cfg.beta)
            (loss.mean() / cfg.grad_accum).backward()
            margin = r_chosen - r_rejected
            sums["loss"] += float(loss.mean().detach()) / cfg.grad_accum
            sums["reward_accuracy"] += float(_win_rate(margin)) / cfg.grad_accum
            sums["reward_margin"] += float(margin.mean()) / cfg.grad_accum
        sums["grad_norm"] = ft.apply_gradients()
        ft.step += 1
        return sums

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out pairs: DPO loss, reward margin and accuracy, and how often log pi prefers the chosen reply."""
        cfg, ft = self.cfg, self.ft
        ft.model.eval()
        chosen, rejected = [], []
        for start in range(0, len(self.val), cfg.batch_size):
            with ft.autocast():
                c, r = pair_logps(ft.model, self.val[start : start + cfg.batch_size], ft.device)
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
        ft.model.train()
        chosen, rejected = torch.cat(chosen), torch.cat(rejected)
        loss, r_chosen, r_rejected = dpo_loss(chosen, rejected, self.ref_val[:, 0], self.ref_val[:, 1], cfg.beta)
        margin = r_chosen - r_rejected
        return {"loss": float(loss.mean()), "reward_accuracy": float(_win_rate(margin)),
                "reward_margin": float(margin.mean()), "chosen_reward": float(r_chosen.mean()),
                "rejected_reward": float(r_rejected.mean()), "logp_accuracy": float(_win_rate(chosen - rejected)),
                "pairs": len(margin)}

    def fit(self, report: Callable[[str], None] = print) -> dict[str, Any]:
        cfg, ft = self.cfg, self.ft
        t0, first, val = time.perf_counter(), None, None
        if ft.step == 0:
            first = self.evaluate()
            ft.metrics.log({"step": 0, "split": "val", **first})
            report(f"step 0: held-out reward acc {first['reward_accuracy']:.3f} | logp acc {first['logp_accuracy']:.3f}")
        try:
            while ft.step < cfg.steps:
                record = self.train_step()
                if ft.due(cfg.log_interval):
                    ft.metrics.log({"step": ft.step, "split": "train", "lr": ft.lr, **record})
                    report(f"step {ft.step}/{cfg.steps} | loss {record['loss']:.4f} | acc {record['reward_accuracy']:.3f} "
                           f"| margin {record['reward_margin']:.3f} | gnorm {record['grad_norm']:.2f}")
                if ft.due(cfg.eval_interval):
                    val = self.evaluate()
                    ft.metrics.log({"step": ft.step, "split": "val", **val})
                    report(f"step {ft.step}: held-out loss {val['loss']:.4f} | reward acc {val['reward_accuracy']:.3f} "
                           f"| margin {val['reward_margin']:.3f}")
                if ft.due(cfg.checkpoint_interval):
                    ft.save()
        finally:
            ft.close()
        return ft.write_summary(time.perf_counter() - t0, data=self.data_stats, val_start=first, val=val)


def _win_rate(margin: Tensor) -> Tensor:
    """Share of positive margins, ties counting half (at step 0 every implicit-reward margin is a tie)."""
    return ((margin > 0).float() + 0.5 * (margin == 0).float()).mean()


def dpo(cfg: DPOConfig, resume: bool = False, report: Callable[[str], None] = print) -> dict[str, Any]:
    return DPO(cfg, resume).fit(report)
