"""Which parameter gets which optimizer and weight decay, decided by its name and shape.

Weight decay only on 2-D weights that are not embeddings: decaying norm gains pulls them toward 0 (not
toward their neutral 1), and decaying embeddings shrinks rare tokens that get few gradient updates.
With Muon, hidden 2-D weights use Muon; embeddings and the output head stay on AdamW, because their rows
are per-token lookups/readouts rather than one linear map whose singular directions should be balanced.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from scratchlm.optim.adamw import AdamW
from scratchlm.optim.base import Closure, evaluate_closure
from scratchlm.optim.config import OptimizerConfig
from scratchlm.optim.muon import Muon

NamedParams = list[tuple[str, Tensor]]


class CombinedOptimizer:
    """Several optimizers over disjoint parameters, stepped, zeroed and checkpointed as one.

    `param_groups` is the concatenation of the members' groups (the same dicts), so set_lr and logging see
    every group.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        if not optimizers:
            raise ValueError("CombinedOptimizer needs at least one optimizer")
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float | Tensor | None:
        """Step every member; the closure (if any) is evaluated once, not once per member."""
        loss = evaluate_closure(closure)
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict["optimizers"]
        if len(states) != len(self.optimizers):
            raise ValueError(
                f"the state_dict has the states of {len(states)} optimizer(s), this CombinedOptimizer holds "
                f"{len(self.optimizers)}: was it saved with another optimizer config?"
            )
        for opt, state in zip(self.optimizers, states):
            opt.load_state_dict(state)

    def __repr__(self) -> str:
        return f"CombinedOptimizer({', '.join(type(opt).__name__ for opt in self.optimizers)})"


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> AdamW | CombinedOptimizer:
    """The optimizer for model's trainable parameters per cfg: AdamW, or Muon + AdamW in a CombinedOptimizer.

    Names come from model.named_parameters(), which lists a tied parameter once (under its first name).
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    if cfg.name == "adamw":
        return _adamw(named, cfg)
    muon = [p for name, p in named if uses_muon(name, p)]
    rest = [(name, p) for name, p in named if not uses_muon(name, p)]
    optimizers: list[torch.optim.Optimizer] = []
    if muon:
        group = {"params": muon, "name": "muon"}
        optimizers.append(
            Muon([group], lr=cfg.muon_lr, momentum=cfg.muon_momentum, ns_steps=cfg.muon_ns_steps,
                 weight_decay=cfg.muon_weight_decay)
        )
    if rest:
        optimizers.append(_adamw(rest, cfg))
    return CombinedOptimizer(optimizers)


def uses_decay(name: str, p: Tensor) -> bool:
    """Weight decay for matrices, except embeddings (norm gains and biases are 1-D)."""
    return p.ndim >= 2 and "embed" not in name


def uses_muon(name: str, p: Tensor) -> bool:
    """Muon for hidden matrices: 2-D, neither an embedding nor the output head."""
    return p.ndim == 2 and "embed" not in name and "lm_head" not in name


def _adamw(named: NamedParams, cfg: OptimizerConfig) -> AdamW:
    """AdamW over named params in a decay and a no-decay group (empty groups left out)."""
    decay = [p for name, p in named if uses_decay(name, p)]
    no_decay = [p for name, p in named if not uses_decay(name, p)]
    groups = [
        {"params": params, "weight_decay": wd, "name": group_name}
        for group_name, params, wd in (("decay", decay, cfg.weight_decay), ("no_decay", no_decay, 0.0))
        if params
    ]
    return AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)
