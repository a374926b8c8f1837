"""What every optimizer here shares."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Closure = Callable[[], "float | Tensor"]


def evaluate_closure(closure: Closure | None) -> float | Tensor | None:
    """The `step(closure)` protocol of torch.optim: re-evaluate the loss with gradients enabled (steps run
    under no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
