"""Next-token cross-entropy, written out: logsumexp minus the target's logit, in float32.

bf16 logits lose too much in exp/sum over a vocabulary of tens of thousands, so everything is upcast first.
z-loss (PaLM, Chowdhery et al. 2022) adds weight * logsumexp^2, keeping the softmax normalizer near 1 so
the logits cannot drift to large values where bf16 rounding dominates.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def logsumexp(x: Tensor) -> Tensor:
    """log(sum(exp(x))) over the last dim of a float tensor (..., V) -> (...), without overflow.

    Subtracting the row max makes the largest exponent exp(0) = 1. The max is detached: the gradient of
    max + logsumexp(x - max) with respect to the max is 1 - 1 = 0, so detaching is exact and saves its backward.
    """
    row_max = x.amax(dim=-1, keepdim=True).detach()  # (..., 1)
    row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)  # an all -inf row gives -inf, not nan
    return (x - row_max).exp_().sum(dim=-1).log() + row_max.squeeze(-1)  # exp_ on the fresh difference: one pass fewer


def _nll_and_logsumexp(logits: Tensor, targets: Tensor, ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-position NLL (...), logsumexp (...) and the mask of counted positions (...), all in float32."""
    logits = logits.float()  # (..., V)
    keep = targets != ignore_index  # (...)
    safe_targets = torch.where(keep, targets, 0)  # ignored positions gather a valid (discarded) entry
    target_logits = logits.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)  # (...)
    lse = logsumexp(logits)  # (...)
    nll = torch.where(keep, lse - target_logits, 0.0)  # (...)
    return nll, lse, keep


def token_losses(logits: Tensor, targets: Tensor, *, ignore_index: int = -100) -> Tensor:
    """Per-position negative log-likelihood (...) in float32 for logits (..., V) and targets (...) long.

    Positions whose target is ignore_index get 0.
    """
    return _nll_and_logsumexp(logits, targets, ignore_index)[0]


def cross_entropy(
    logits: Tensor, targets: Tensor, *, z_loss_weight: float = 0.0, ignore_index: int = -100
) -> Tensor:
    """Mean NLL over positions whose target is not ignore_index, plus z_loss_weight * mean(logsumexp^2).

    logits (..., V) any float dtype, targets (...) long; returns a 0-d float32 tensor. When every position is
    ignored the loss is 0 (not NaN as in torch), so a batch of pure padding cannot poison training.
    The backward is written by hand (`_CrossEntropy`): one pass over the logits instead of autograd's chain
    of upcast, exp, and a scatter into a zero tensor of logits' size.
    """
    return _CrossEntropy.apply(logits, targets, z_loss_weight, ignore_index)


class _CrossEntropy(torch.autograd.Function):
    """d loss / d logits = (softmax(logits) * (1 + 2 w lse) - onehot(target)) / count on kept positions."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, z_loss_weight: float, ignore_index: int) -> Tensor:
        nll, lse, keep = _nll_and_logsumexp(logits, targets, ignore_index)
        count = keep.sum().clamp(min=1)  # () long, stays on device: no host sync
        loss = nll.sum() / count
        if z_loss_weight != 0:
            loss = loss + z_loss_weight * torch.where(keep, lse.square(), 0.0).sum() / count
        ctx.save_for_backward(logits, targets, lse, keep, count)
        ctx.z_loss_weight = z_loss_weight
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        logits, targets, lse, keep, count = ctx.saved_tensors
        scale = torch.where(keep, grad_loss / count, 0.0)  # (...)
        probs_scale = scale * (1 + 2 * ctx.z_loss_weight * lse) if ctx.z_loss_weight != 0 else scale
        # In place on one fresh float32 buffer: three passes over (..., V) instead of autograd's six or seven
        # (this dominates a small model's step on the CPU).
        grad = (logits.float() - lse.unsqueeze(-1)).exp_().mul_(probs_scale.unsqueeze(-1))  # softmax * scale
        safe_targets = torch.where(keep, targets, 0).unsqueeze(-1)  # ignored rows have scale 0
        grad.scatter_add_(-1, safe_targets, -scale.unsqueeze(-1))  # - onehot * scale
        return grad.to(logits.dtype), None, None, None


def perplexity(mean_loss: float) -> float:
    """exp(mean NLL in nats): the effective number of equally likely next tokens (inf when it overflows)."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Total NLL in nats -> bits per byte of the original text: comparable across tokenizers."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be > 0, got {n_bytes}")
    return total_nats / (math.log(2) * n_bytes)
