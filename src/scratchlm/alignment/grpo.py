"""The math of GRPO (Shao et al. 2024, DeepSeekMath) and its simpler relatives, on per-token tensors.

Shapes: rewards (N,) for N = prompts x group_size responses, grouped consecutively; per-token tensors
(N, T) aligned with the rollout's input ids, `mask` (N, T) selecting response tokens.

Losses (per token, to be minimized; all push up log pi of tokens with positive weight):
  no_baseline              -R * log pi                 naive policy gradient on the raw reward
  reinforce_with_baseline  -A * log pi                 A = group-normalized advantage (mean, optionally std)
  grpo_clip                -min(rho A, clip(rho, 1-e, 1+e) A),  rho = pi / pi_old  (PPO's clipped surrogate,
                           valid for several optimizer epochs on one batch of rollouts)
Optional KL penalty to a reference with the k3 estimator (Schulman 2020): exp(r) - r - 1, r = log ref - log pi,
unbiased for KL(pi || ref) under samples from pi and never negative.

Per-sequence aggregation: masked_mean divides each response's token sum by its own length (GRPO); masked
normalize divides by a constant (Dr. GRPO, Liu et al. 2025: no length bias, e.g. max_new_tokens).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

LossKind = Literal["no_baseline", "reinforce_with_baseline", "grpo_clip"]
Aggregation = Literal["masked_mean", "masked_normalize"]


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x where mask is True, along `dim` (all elements when None); 0 where the mask is empty."""
    mask = mask.to(x.dtype)
    total = (x * mask).sum() if dim is None else (x * mask).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1)


def masked_normalize(x: Tensor, mask: Tensor, normalizer: float, dim: int | None = None) -> Tensor:
    """Sum of x where mask is True, along `dim`, divided by a constant."""
    masked = x * mask.to(x.dtype)
    return (masked.sum() if dim is None else masked.sum(dim)) / normalizer


def group_advantages(rewards: Tensor, group_size: int, *, normalize_std: bool = True, eps: float = 1e-6) -> Tensor:
    """(N,) -> (N,): each reward minus its group's mean, divided by the group's (unbiased) std + eps if asked.
    A group where every response got the same reward gets advantage 0: it carries no signal."""
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)  # (prompts, G)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if normalize_std:
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
        centered = centered / (std + eps)
    return centered.reshape(-1)


def policy_gradient_loss(logprobs: Tensor, weights: Tensor) -> Tensor:
    """-weight * log pi per token: (N, T) and (N,) -> (N, T). Raw rewards as weights give the naive policy
    gradient; advantages give REINFORCE with a baseline."""
    return -weights[:, None] * logprobs


def grpo_clip_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, cliprange: float) -> tuple[Tensor, Tensor]:
    """(-min(rho A, clip(rho) A) per token (N, T), where the clipped term was the smaller one (N, T) bool)."""
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - cliprange, 1 + cliprange) * adv
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token estimate of KL(pi || ref) from tokens sampled from pi: exp(r) - r - 1 with r = log ref - log pi."""
    r = ref_logprobs - logprobs
    return torch.exp(r) - r - 1


def per_token_policy_loss(kind: LossKind, logprobs: Tensor, *, raw_rewards: Tensor, advantages: Tensor,
                          old_logprobs: Tensor | None = None, cliprange: float = 0.2) -> tuple[Tensor, Tensor | None]:
    """(loss (N, T), clipped (N, T) bool or None) for one of the three losses."""
    if kind == "no_baseline":
        return policy_gradient_loss(logprobs, raw_rewards), None
    if kind == "reinforce_with_baseline":
        return policy_gradient_loss(logprobs, advantages), None
    if kind == "grpo_clip":
        if old_logprobs is None:
            raise ValueError("grpo_clip needs the old (sampling-time) log-probs")
        return grpo_clip_loss(logprobs, old_logprobs, advantages, cliprange)
    raise ValueError(f"unknown loss {kind!r}: no_baseline, reinforce_with_baseline or grpo_clip")


def aggregate(per_token: Tensor, mask: Tensor, how: Aggregation, normalizer: float) -> Tensor:
    """(N, T) -> (N,) per-sequence losses: masked_mean (by own length) or masked_normalize (by a constant)."""
    if how == "masked_mean":
        return masked_mean(per_token, mask, dim=-1)
    if how == "masked_normalize":
        return masked_normalize(per_token, mask, normalizer, dim=-1)
    raise ValueError(f"unknown aggregation {how!r}: masked_mean or masked_normalize")
