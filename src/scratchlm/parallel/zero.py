"""ZeRO stage 1 (Rajbhandari et al. 2020): optimizer state sharded over the data-parallel ranks.

Gradients are still averaged in full on every rank (DDP), but each rank updates only the parameters it
owns and keeps optimizer state (AdamW's two moments: 2x the parameters in float32) only for those; after
its local step every parameter is broadcast from its owner, so that all replicas stay equal. Any optimizer
class works (ours or torch.optim): the wrapper builds one instance over the rank's share of each group.

Partition: whole parameters, greedy by size (largest first, to the least-loaded rank; ties to the lowest
rank): within one parameter of the ideal numel/N per rank, and the same on every rank by construction.

Checkpoints: `state_dict()` gathers the shards to rank 0 into exactly the unsharded optimizer's
state_dict (state keyed by the global parameter index, groups listing global indices), so it loads into
an unsharded optimizer, and `load_state_dict(full)` on every rank keeps its own parameters' state. The
saved state therefore does not depend on the number of ranks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from scratchlm.optim.base import Closure
from scratchlm.parallel.dist import is_distributed, rank, world_size


def partition_params(numels: list[int], n_ranks: int) -> list[int]:
    """The owning rank of each parameter, balancing the summed numel per rank (greedy, largest first)."""
    load = [0] * n_ranks
    owner = [0] * len(numels)
    for i in sorted(range(len(numels)), key=lambda i: (-numels[i], i)):
        r = min(range(n_ranks), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += numels[i]
    return owner


def _to_cpu(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in state.items()}


class ZeroRedundancyOptimizer:
    """`optimizer_class(params, **defaults)`, with state sharded over the ranks. `params`: tensors or
    param-group dicts, as for any torch optimizer; the same on every rank."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], optimizer_class: type[torch.optim.Optimizer],
                 **defaults: Any) -> None:
        groups = list(params)
        if groups and isinstance(groups[0], Tensor):
            groups = [{"params": groups}]
        self.global_groups = [{**g, "params": list(g["params"])} for g in groups]
        self.all_params: list[Tensor] = [p for g in self.global_groups for p in g["params"]]  # global index order
        if not self.all_params:
            raise ValueError("ZeroRedundancyOptimizer got no parameters")
        self.rank = rank()
        self.owner = partition_params([p.numel() for p in self.all_params], world_size())
        owned = {id(p) for p, r in zip(self.all_params, self.owner) if r == self.rank}
        # Every group is kept (possibly empty here) so that group i means the same group on every rank.
        local_groups = [{**g, "params": [p for p in g["params"] if id(p) in owned]} for g in self.global_groups]
        self.optimizer = optimizer_class(local_groups, **defaults)
        self.local_index = [i for i, p in enumerate(self.all_params) if id(p) in owned]  # local i -> global

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The local optimizer's groups: the same hyperparameters on every rank (set_lr edits these)."""
        return self.optimizer.param_groups

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float | Tensor | None:
        """Update the owned parameters, then give every rank every updated parameter."""
        loss = self.optimizer.step(closure)
        if is_distributed():
            works = [dist.broadcast(p.data, src=owner, async_op=True) for p, owner in zip(self.all_params, self.owner)]
            for work in works:
                work.wait()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """All gradients, owned or not (DDP filled them all)."""
        for p in self.all_params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    # -- checkpoints ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any] | None:
        """Collective: the unsharded optimizer's state_dict on rank 0 (tensors on the CPU), None elsewhere."""
        local = self.optimizer.state_dict()
        mine = {self.local_index[i]: _to_cpu(s) for i, s in local["state"].items()}
        if not is_distributed():
            shards = [mine]
        else:
            shards = [None] * world_size() if self.rank == 0 else None
            dist.gather_object(mine, shards, dst=0)
        if self.rank != 0:
            return None
        state = {i: s for shard in shards for i, s in shard.items()}
        groups, start = [], 0
        for local_group, group in zip(local["param_groups"], self.global_groups):
            groups.append({**local_group, "params": list(range(start, start + len(group["params"])))})
            start += len(group["params"])
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the full (unsharded) state_dict: every rank keeps the state of its own parameters."""
        groups = state_dict["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.global_groups]:
            raise ValueError("optimizer state does not fit: its parameter groups differ from this optimizer's")
        state = state_dict["state"]
        local_groups, start = [], 0
        for saved, local_group in zip(groups, self.optimizer.param_groups):
            local_groups.append({**saved, "params": list(range(start, start + len(local_group["params"])))})
            start += len(local_group["params"])
        local_state = {i: state[g] for i, g in enumerate(self.local_index) if g in state}
        self.optimizer.load_state_dict({"state": local_state, "param_groups": local_groups})

    def __repr__(self) -> str:
        return f"ZeroRedundancyOptimizer({type(self.optimizer).__name__}, rank {self.rank} of {world_size()})"
