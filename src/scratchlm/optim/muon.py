"""Muon (Keller Jordan 2024): momentum SGD whose update matrix is orthogonalized before it is applied.

For a 2-D weight the momentum-averaged gradient M = U S V^T is replaced by (approximately) U V^T: every
singular direction moves by the same amount, so the rare directions that plain SGD/Adam barely move get
a full-size step. U V^T is computed with a few Newton-Schulz iterations (matmuls only, fast in bfloat16)
rather than an SVD. Embeddings, the output head and 1-D gains are left to AdamW (see param_groups).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from scratchlm.optim.base import Closure, evaluate_closure

# Quintic coefficients from Keller Jordan's Muon: they maximize the slope at 0 (fast growth of small singular
# values) at the price of not converging: singular values end up roughly in [0.5, 1.5] instead of at 1,
# which does not hurt training in practice.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def zeropower_via_newtonschulz(G: Tensor, steps: int = 5) -> Tensor:
    """Approximately U V^T for G = U S V^T (G: (..., rows, cols)), returned in G's dtype and shape.

    Each iteration applies p(x) = a x + b x^3 + c x^5 to the singular values, which needs them in [0, 1]:
    hence the division by the Frobenius norm (an upper bound of the largest one). Computed in bfloat16 on
    CUDA (the iteration tolerates it and tensor cores are fast) and float32 elsewhere. Wide orientation
    keeps X @ X^T the smaller of the two Gram matrices.
    """
    a, b, c = NS_COEFFICIENTS
    X = G.to(torch.bfloat16 if G.device.type == "cuda" else torch.float32)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT  # (..., cols, rows): now wide
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT  # (..., r, r) with r = min(rows, cols)
        B = b * A + c * (A @ A)  # (..., r, r)
        X = a * X + B @ X  # (..., r, max(rows, cols))
    if tall:
        X = X.mT
    return X.to(G.dtype)


def orthogonalized_updates(directions: list[Tensor], ns_steps: int) -> list[Tensor]:
    """Each (rows, cols) direction orthogonalised and scaled by sqrt(max(1, rows/cols)) (so tall matrices'
    updates have the per-element size of square ones'), in input order. A fused parameter's blocks
    (`Linear.row_splits`) come in as separate directions: each is one linear map of its own."""
    out: list[Tensor | None] = [None] * len(directions)
    by_shape: dict[tuple, list[int]] = {}
    for i, d in enumerate(directions):
        by_shape.setdefault((d.shape, d.device, d.dtype), []).append(i)
    for (shape, _, _), indices in by_shape.items():
        stacked = zeropower_via_newtonschulz(torch.stack([directions[i] for i in indices]), ns_steps)  # (n, r, c)
        scale = max(1.0, shape[0] / shape[1]) ** 0.5
        for i, update in zip(indices, stacked.unbind(0)):
            out[i] = update * scale
    return out


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters only; per-parameter state `momentum_buffer` (shaped like the param).

    update = NS(nesterov ? lerp(g, buf, momentum) : buf) * sqrt(max(1, rows / cols)); the scale keeps the
    per-entry size of the update comparable between wide and tall matrices. Weight decay is decoupled.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if ns_steps < 1:
            raise ValueError(f"ns_steps must be >= 1, got {ns_steps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Reject non-matrices up front (also covers the constructor, which adds its groups through here)."""
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            if p.ndim != 2:
                raise ValueError(f"Muon only takes 2-D parameters, got one of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float | Tensor | None:
        """One update of every parameter that has a gradient; params whose grad is None keep value and state.

        The Newton–Schulz iterations of all equally shaped matrices of a group run as one batched product
        (every layer's q, o, gate, ... at once): a handful of large GEMMs instead of many small launches.
        """
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            directions = [self._momentum_direction(p, group) for p in params]
            blocks = [d.split(list(getattr(p, "row_splits", None) or (p.size(0),))) for p, d in zip(params, directions)]
            updates = iter(orthogonalized_updates([b for bs in blocks for b in bs], group["ns_steps"]))
            for p, bs in zip(params, blocks):
                update = torch.cat([next(updates) for _ in bs])
                if group["weight_decay"] != 0:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        return loss

    def _momentum_direction(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        """Update p's momentum buffer with its gradient; return the (Nesterov) direction to orthogonalise."""
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        buf = state["momentum_buffer"]  # (rows, cols)
        buf.lerp_(p.grad, 1 - group["momentum"])
        return p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
