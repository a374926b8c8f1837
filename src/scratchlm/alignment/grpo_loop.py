"""`scratchlm grpo`: policy-gradient training on verifiable rewards.

Each step: 1) sample `prompts_per_step` problems and `group_size` responses to each (rollout);
2) score them (exact answer + weighted format reward) and turn rewards into group-normalized advantages;
3) record the sampling-time log-probs (grpo_clip) and the reference's (KL penalty);
4) `epochs` optimizer steps over the batch, micro-batch by micro-batch (epochs > 1 is the off-policy
regime the clipped ratio exists for); 5) log reward, accuracy, entropy, clip fraction, KL, lengths.
Held-out accuracy (greedy, one response per problem) is measured at the start and every eval_interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from scratchlm.alignment.finetune import FinetuneConfig, Finetuner, load_chat_model
from scratchlm.alignment.grpo import (
    Aggregation,
    LossKind,
    aggregate,
    group_advantages,
    kl_k3,
    masked_mean,
    per_token_policy_loss,
)
from scratchlm.alignment.rewards import ArithmeticTask, Problem, answer_reward, format_reward, gsm8k_problems
from scratchlm.alignment.rollout import Rollouts, rollout
from scratchlm.config import ConfigError
from scratchlm.eval.datasets import GSM8K_TEST, GSM8K_TRAIN, read_jsonl
from scratchlm.eval.logprobs import response_logprobs

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class GRPOConfig(FinetuneConfig):
    out: str = field(default="runs/grpo", metadata={"help": "run folder: config, metrics, checkpoints"})
    task: Literal["arithmetic", "gsm8k"] = field(default="arithmetic", metadata={"help": "arithmetic: synthetic 'What is a + b?'; gsm8k: GSM8K train questions"})
    digits: int = field(default=2, metadata={"help": "arithmetic: operand digits"})
    ops: str = field(default="+", metadata={"help": "arithmetic: operators to draw from (+-*)"})
    eval_problems: int = field(default=64, metadata={"help": "held-out problems for greedy accuracy"})
    prompts_per_step: int = field(default=8, metadata={"help": "problems per rollout batch"})
    group_size: int = field(default=8, metadata={"help": "responses sampled per problem (G)"})
    temperature: float = field(default=1.0, metadata={"help": "rollout sampling temperature"})
    top_p: float | None = field(default=None, metadata={"help": "rollout nucleus sampling mass (default: off)"})
    max_new_tokens: int = field(default=16, metadata={"help": "response length limit"})
    loss: LossKind = field(default="grpo_clip", metadata={"help": "no_baseline, reinforce_with_baseline or grpo_clip"})
    normalize_std: bool = field(default=True, metadata={"help": "divide advantages by the group's std"})
    advantage_eps: float = field(default=1e-6, metadata={"help": "epsilon added to the group std"})
    cliprange: float = field(default=0.2, metadata={"help": "grpo_clip: ratio clip range"})
    epochs: int = field(default=1, metadata={"help": "optimizer steps per rollout batch (off-policy epochs)"})
    aggregation: Aggregation = field(default="masked_mean", metadata={"help": "masked_mean (per-response length) or masked_normalize (by max_new_tokens)"})
    kl_coef: float = field(default=0.0, metadata={"help": "weight of the k3 KL penalty to the starting model (0: none)"})
    format_weight: float = field(default=0.0, metadata={"help": "weight of the format reward added to the answer reward"})
    batch_size: int = field(default=64, metadata={"help": "rollout rows per forward/backward micro-batch"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("digits", "eval_problems", "prompts_per_step", "group_size", "max_new_tokens", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.group_size < 2 and self.loss != "no_baseline":
            raise ConfigError(f"loss {self.loss} needs group_size >= 2 (a group of one has no baseline)")
        if self.temperature <= 0 or not 0 < self.cliprange < 1 or self.kl_coef < 0 or self.advantage_eps < 0:
            raise ConfigError("need temperature > 0, 0 < cliprange < 1, kl_coef >= 0 and advantage_eps >= 0")


class GRPO:
    def __init__(self, cfg: GRPOConfig, resume: bool = False):
        self.cfg = cfg
        self.ft = Finetuner(cfg, "grpo", resume)
        self.reference = load_chat_model(cfg.base, self.ft.device)[0].eval() if cfg.kl_coef > 0 else None
        if cfg.task == "arithmetic":
            self.arithmetic = ArithmeticTask(cfg.digits, cfg.ops)
            self.format_style = "number"
            self.held_out = self.arithmetic.problems(cfg.eval_problems, seed=10_000 + cfg.seed)  # another stream than training
        else:
            self.train_pool = gsm8k_problems(read_jsonl(GSM8K_TRAIN))
            self.format_style = "gsm8k"
            self.held_out = gsm8k_problems(read_jsonl(GSM8K_TEST, cfg.eval_problems))

    def problems(self, step: int) -> list[Problem]:
        """This step's problems: a function of (seed, step), so a resumed run continues the same stream."""
        cfg = self.cfg
        if cfg.task == "arithmetic":
            return self.arithmetic.problems(cfg.prompts_per_step, seed=cfg.seed * 1_000_003 + step)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        return [self.train_pool[i] for i in torch.randint(len(self.train_pool), (cfg.prompts_per_step,), generator=g).tolist()]

    def rewards(self, batch: Rollouts, answers: list) -> tuple[Tensor, Tensor, Tensor]:
        """(reward, correct, format) per response, each (N,) float."""
        correct = torch.tensor([answer_reward(t, a) for t, a in zip(batch.texts, answers, strict=True)])
        fmt = torch.tensor([format_reward(t, f, self.format_style) for t, f in zip(batch.texts, batch.finished, strict=True)])
        return correct + self.cfg.format_weight * fmt, correct, fmt

    @torch.no_grad()
    def _logprobs(self, model: torch.nn.Module, batch: Rollouts) -> Tensor:
        out = []
        for start in range(0, len(batch.texts), self.cfg.batch_size):
            rows = slice(start, start + self.cfg.batch_size)
            with self.ft.autocast():
                out.append(response_logprobs(model, batch.input_ids[rows], batch.response_mask[rows])[0])
        return torch.cat(out)

    def train_step(self) -> dict[str, float]:
        cfg, ft = self.cfg, self.ft
        problems = self.problems(ft.step)
        t0 = time.perf_counter()
        batch = rollout(ft.model, ft.tokenizer, [p.prompt for p in problems], cfg.group_size,
                        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                        seed=cfg.seed * 1_000_003 + ft.step)
        t_rollout = time.perf_counter() - t0
        reward, correct, fmt = self.rewards(batch, [p.answer for p in problems for _ in range(cfg.group_size)])
        advantages = group_advantages(reward, cfg.group_size, normalize_std=cfg.normalize_std, eps=cfg.advantage_eps)
        reward, advantages = reward.to(ft.device), advantages.to(ft.device)
        old = self._logprobs(ft.model, batch) if cfg.loss == "grpo_clip" else None
        ref = self._logprobs(self.reference, batch) if self.reference is not None else None
        n, stats = len(batch.texts), {"loss": 0.0, "entropy": 0.0, "clip_fraction": 0.0, "kl": 0.0}
        for _ in range(cfg.epochs):
            for start in range(0, n, cfg.batch_size):
                rows = slice(start, start + cfg.batch_size)
                ids, mask = batch.input_ids[rows], batch.response_mask[rows]
                with ft.autocast():
                    logprobs, entropy = response_logprobs(ft.model, ids, mask)
                per_token, clipped = per_token_policy_loss(
                    cfg.loss, logprobs, raw_rewards=reward[rows], advantages=advantages[rows],
                    old_logprobs=None if old is None else old[rows], cliprange=cfg.cliprange)
                if ref is not None:
                    kl = kl_k3(logprobs, ref[rows])
                    per_token = per_token + cfg.kl_coef * kl
                    stats["kl"] += float(masked_mean(kl.detach(), mask)) * ids.shape[0] / (n * cfg.epochs)
                loss = aggregate(per_token, mask, cfg.aggregation, cfg.max_new_tokens).sum() / n
                loss.backward()
                weight = ids.shape[0] / (n * cfg.epochs)
                stats["loss"] += float(loss.detach()) * n / ids.shape[0] * weight
                stats["entropy"] += float(masked_mean(entropy, mask)) * weight
                if clipped is not None:
                    stats["clip_fraction"] += float(masked_mean(clipped.float(), mask)) * weight
            stats["grad_norm"] = ft.apply_gradients()
        ft.step += 1
        return {**stats, "reward": float(reward.mean()), "accuracy": float(correct.mean()), "format": float(fmt.mean()),
                "response_length": float(batch.response_lengths.float().mean()),
                "finished": sum(batch.finished) / n, "rollout_seconds": t_rollout}

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Greedy accuracy and format rate on the held-out problems, with a few samples to read."""
        cfg, ft = self.cfg, self.ft
        batch = rollout(ft.model, ft.tokenizer, [p.prompt for p in self.held_out], 1, max_new_tokens=cfg.max_new_tokens,
                        temperature=0.0)
        _, correct, fmt = self.rewards(batch, [p.answer for p in self.held_out])
        return {"accuracy": float(correct.mean()), "format": float(fmt.mean()), "problems": len(correct),
                "samples": [{"prompt": p.prompt, "response": t} for p, t in zip(self.held_out[:3], batch.texts, strict=False)]}

    def fit(self, report: Callable[[str], None] = print) -> dict[str, Any]:
        cfg, ft = self.cfg, self.ft
        t0, first, val, curve = time.perf_counter(), None, None, []
        if ft.step == 0:
            first = self.evaluate()
            ft.metrics.log({"step": 0, "split": "val", **{k: v for k, v in first.items() if k != "samples"}})
            report(f"step 0: held-out accuracy {first['accuracy']:.3f}")
        try:
            while ft.step < cfg.steps:
                record = self.train_step()
                curve.append({"step": ft.step, "reward": record["reward"], "accuracy": record["accuracy"]})
                if ft.due(cfg.log_interval):
                    ft.metrics.log({"step": ft.step, "split": "train", "lr": ft.lr, **record})
                    report(f"step {ft.step}/{cfg.steps} | reward {record['reward']:.3f} | acc {record['accuracy']:.3f} "
                           f"| entropy {record['entropy']:.3f} | clip {record['clip_fraction']:.3f} "
                           f"| len {record['response_length']:.1f} | gnorm {record['grad_norm']:.2f}")
                if ft.due(cfg.eval_interval):
                    val = self.evaluate()
                    ft.metrics.log({"step": ft.step, "split": "val", **{k: v for k, v in val.items() if k != "samples"}})
                    report(f"step {ft.step}: held-out accuracy {val['accuracy']:.3f} | format {val['format']:.3f}")
                if ft.due(cfg.checkpoint_interval):
                    ft.save()
        finally:
            ft.close()
        return ft.write_summary(time.perf_counter() - t0, val_start=first, val=val, curve=curve)


def grpo(cfg: GRPOConfig, resume: bool = False, report: Callable[[str], None] = print) -> dict[str, Any]:
    return GRPO(cfg, resume).fit(report)
