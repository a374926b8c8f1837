"""AdamW (Loshchilov & Hutter 2019): Adam with weight decay applied to the weights, not mixed into the gradient.

The update is the one of torch.optim.AdamW, operation for operation, so the two agree to float rounding:

    p   *= 1 - lr * wd                                    (decoupled decay: independent of the gradient scale)
    m    = lerp(m, g, 1 - beta1);   v = beta2 * v + (1 - beta2) * g^2
    p   -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

Parameters are updated with torch._foreach_* ops, one batch per (device, dtype), so a step launches a handful
of kernels per group instead of several per parameter.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from scratchlm.optim.base import Closure, evaluate_closure


def group_by_device_and_dtype(params: list[Tensor]) -> list[list[Tensor]]:
    """Split params into lists that a single foreach kernel can take (one device and one dtype each)."""
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
    for p in params:
        groups[(p.device, p.dtype)].append(p)
    return list(groups.values())


class AdamW(torch.optim.Optimizer):
    """AdamW with per-parameter state `step` (python int), `exp_avg` and `exp_avg_sq` (shaped like the param)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float | Tensor | None:
        """One update of every parameter that has a gradient; params whose grad is None keep value and state."""
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            with_grad = [p for p in group["params"] if p.grad is not None]
            for params in group_by_device_and_dtype(with_grad):
                self._update(params, group)
        return loss

    def _state(self, p: Tensor) -> dict[str, Any]:
        """The state of p, created on its first update (zero moments, step 0)."""
        state = self.state[p]
        if not state:
            if p.grad.is_sparse:
                raise RuntimeError("AdamW does not support sparse gradients")
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _update(self, params: list[Tensor], group: dict[str, Any]) -> None:
        """The AdamW update of params (one device and dtype, all with a gradient), in foreach ops."""
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        states = [self._state(p) for p in params]
        grads = [p.grad for p in params]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        for s in states:
            s["step"] += 1

        if weight_decay != 0:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)

        # Bias corrections are per parameter: a param that sometimes has no grad has taken fewer steps.
        step_sizes = [-lr / (1 - beta1 ** s["step"]) for s in states]
        bias_correction2_sqrts = [(1 - beta2 ** s["step"]) ** 0.5 for s in states]
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, bias_correction2_sqrts)
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denoms, step_sizes)
