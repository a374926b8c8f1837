"""Global gradient-norm clipping: one L2 norm over all gradients, all scaled by the same factor.

Scaling the whole gradient (rather than each tensor) keeps its direction; the factor is computed on the
device and applied by multiplication, so clipping never waits for the GPU (no `if norm > max_norm` on host).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import Tensor


def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float, eps: float = 1e-6) -> Tensor:
    """Scale grads in place so that their global L2 norm is at most max_norm; returns the norm before clipping.

    The norm is a 0-d float32 tensor on the first gradient's device (0.0 when no parameter has a gradient).
    Grads are multiplied by min(1, max_norm / (norm + eps)): unchanged when the norm is below max_norm.
    A parameter listed twice (tied weights) counts once.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    unique = {id(p): p for p in parameters}.values()
    grads = [p.grad for p in unique if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    by_device = _group_by_device(grads)
    first_device = grads[0].device
    norms = [n.to(first_device) for g in by_device.values() for n in torch._foreach_norm(g, 2, dtype=torch.float32)]
    total = torch.linalg.vector_norm(torch.stack(norms))  # (n_grads,) -> ()
    scale = torch.clamp(max_norm / (total + eps), max=1.0)  # ()
    for device, device_grads in by_device.items():
        torch._foreach_mul_(device_grads, scale.to(device))
    return total


def _group_by_device(tensors: list[Tensor]) -> dict[torch.device, list[Tensor]]:
    """Tensors by device: one foreach call per device."""
    groups: dict[torch.device, list[Tensor]] = defaultdict(list)
    for t in tensors:
        groups[t.device].append(t)
    return groups
