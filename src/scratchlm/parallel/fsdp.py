"""Fully sharded data parallelism (ZeRO stage 3 style): parameters, gradients and optimizer state sharded.

Each wrapped unit (every Transformer block, plus the root for what is left: embeddings, final norm, head)
keeps its trainable parameters as flat vectors (one per parameter group, e.g. decay / no-decay), padded to
a multiple of the world size; rank r stores slice r (`FlatParam.shard`, an nn.Parameter in float32) and the
optimizer only ever sees these shards. Per unit and step:

1. before its forward (forward pre-hook), all-gather the shards into the full vector, in the compute dtype,
   and point the module attributes (`block.attn.qkv.weight` ...) at views of it. The gather is an autograd
   Function (`_Unshard`), so gradients w.r.t. the views flow back to the shard;
2. after its forward, drop the full vector. Autograd would keep it alive through the tensors it saves for
   backward (`x @ W.T` saves W); a saved-tensors hook replaces every saved view of a gathered vector by a
   small marker (which vector, offset, shape, strides);
3. in backward, the first marker unpacked gathers the unit's vector again; once backward reaches `_Unshard`,
   the parameter gradients are packed into one float32 vector, reduce-scattered (summed, each rank keeps
   its slice, divided by the world size) into the shard's gradient, and the gathered vector is dropped.

Trade-offs (correctness over speed): gathers are not prefetched and the reduce-scatter is synchronous,
so communication does not overlap computation; gradients are reduced in float32 whatever the compute dtype.
Frozen parameters and buffers are not sharded: they are replicated (broadcast from rank 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from scratchlm.parallel.dist import broadcast_tensors, is_distributed, rank, world_size

GroupFn = Callable[[str, nn.Parameter], str]


def _all_gather(shard: Tensor, world: int) -> Tensor:
    """(n,) on every rank -> (world * n,) concatenated in rank order."""
    if world == 1:
        return shard.clone()
    full = shard.new_empty(world * shard.numel())
    dist.all_gather_into_tensor(full, shard.contiguous())
    return full


class FlatParam:
    """Some parameters of one unit as one padded flat vector, sharded over the ranks."""

    def __init__(self, params: list[nn.Parameter], names: list[list[str]], refs: list[list[tuple[nn.Module, str]]],
                 group: str, compute_dtype: torch.dtype | None) -> None:
        self.names, self.refs, self.group = names, refs, group  # per param: its state_dict names / (module, attr)s
        self.shapes = [p.shape for p in params]
        self.numels = [p.numel() for p in params]
        self.numel = sum(self.numels)
        self.world, self.rank = world_size(), rank()
        self.shard_numel = math.ceil(self.numel / self.world)
        self.padded = self.shard_numel * self.world
        self.compute_dtype = compute_dtype or params[0].dtype
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in params])  # (numel,)
            flat = nn.functional.pad(flat, (0, self.padded - self.numel))  # (padded,)
            self.shard = nn.Parameter(flat[self.rank * self.shard_numel:(self.rank + 1) * self.shard_numel].clone())
        self.full_for_backward: Tensor | None = None

    def gather(self) -> Tensor:
        """The full (padded,) vector in the compute dtype, on every rank (no autograd)."""
        with torch.no_grad():
            return _all_gather(self.shard.detach().to(self.compute_dtype), self.world)

    def gathered_for_backward(self) -> Tensor:
        if self.full_for_backward is None:
            self.full_for_backward = self.gather()
        return self.full_for_backward

    def views(self, full: Tensor) -> list[Tensor]:
        return [t.view(shape) for t, shape in zip(full[: self.numel].split(self.numels), self.shapes)]

    def set_attrs(self, tensors: list[Tensor] | None) -> None:
        """Point the modules' attributes at the gathered views (None: unset them, the storage can go)."""
        for i, refs in enumerate(self.refs):
            for module, attr in refs:
                setattr(module, attr, None if tensors is None else tensors[i])

    def reduce_scatter(self, grads: list[Tensor | None]) -> Tensor:
        """(shard_numel,): this rank's slice of the sum over ranks of the full gradient, / world, reduced in at
        least float32 (a bf16 sum over ranks would lose the small contributions)."""
        reduce_dtype = torch.promote_types(self.shard.dtype, torch.float32)
        full = torch.zeros(self.padded, dtype=reduce_dtype, device=self.shard.device)
        offset = 0
        for g, n in zip(grads, self.numels):
            if g is not None:
                full[offset:offset + n].copy_(g.reshape(-1))
            offset += n
        if self.world == 1:
            return full.to(self.shard.dtype)
        out = torch.empty(self.shard_numel, dtype=reduce_dtype, device=full.device)
        dist.reduce_scatter_tensor(out, full)
        return out.div_(self.world).to(self.shard.dtype)

    def slice_of(self, full: Tensor) -> Tensor:
        """This rank's slice of an unpadded (numel,) vector laid out like this flat parameter."""
        full = nn.functional.pad(full.reshape(-1), (0, self.padded - self.numel))
        return full[self.rank * self.shard_numel:(self.rank + 1) * self.shard_numel]


class _Unshard(torch.autograd.Function):
    """shard -> the unit's parameter views (forward: all-gather); grads -> shard grad (backward: reduce-scatter)."""

    @staticmethod
    def forward(ctx: Any, shard: Tensor, flat: FlatParam, full: Tensor) -> tuple[Tensor, ...]:
        ctx.flat = flat
        return tuple(flat.views(full))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, None, None]:
        flat: FlatParam = ctx.flat
        shard_grad = flat.reduce_scatter(list(grads))
        flat.full_for_backward = None  # every saved view of this unit has been used by now
        return shard_grad, None, None


class FSDP(nn.Module):
    """Shards `module`'s trainable parameters per unit: each of `units` (submodules, e.g. the blocks) and
    the root (everything else). `group_fn(name, param)` splits a unit's parameters into flat vectors by
    group name, so that the optimizer can treat groups differently (weight decay on matrices only).
    `compute_dtype`: dtype of the gathered parameters (None: the parameters' own)."""

    def __init__(self, module: nn.Module, units: Iterable[nn.Module] = (), group_fn: GroupFn | None = None,
                 compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.module = module
        self.world_size = world_size()
        if hasattr(module, "config"):
            self.config = module.config  # generation reads model.config
        broadcast_tensors(list(module.parameters()) + list(module.buffers()))
        unit_modules = list(units)
        # 1) which unit each module belongs to: the innermost wrapped unit containing it (root: -1)
        unit_of = {id(m): u for u, unit in enumerate(unit_modules) for m in unit.modules()}
        # 2) every reference (module, attribute) of every trainable parameter, per unit
        per_unit: list[dict[int, tuple[nn.Parameter, list[str], list[tuple[nn.Module, str]]]]] = [
            {} for _ in range(len(unit_modules) + 1)]
        where: dict[int, int] = {}
        for mod_name, m in module.named_modules(remove_duplicate=False):
            for attr, p in list(m._parameters.items()):
                if p is None or not p.requires_grad:
                    continue
                u = unit_of.get(id(m), -1)
                if where.setdefault(id(p), u) != u:
                    raise ValueError(f"parameter {mod_name}.{attr} is shared between two FSDP units; wrap a module "
                                     "that contains both uses")
                entry = per_unit[u].setdefault(id(p), (p, [], []))
                entry[1].append(f"{mod_name}.{attr}" if mod_name else attr)
                entry[2].append((m, attr))
        # 3) flatten per (unit, group), and take the parameters out of their modules
        group_fn = group_fn or (lambda name, p: "params")
        self.units: list[list[FlatParam]] = []
        for entries in per_unit:
            groups: dict[str, list[tuple[nn.Parameter, list[str], list[tuple[nn.Module, str]]]]] = {}
            for p, names, refs in entries.values():
                groups.setdefault(group_fn(names[0], p), []).append((p, names, refs))
            flats = [FlatParam([e[0] for e in members], [e[1] for e in members], [e[2] for e in members], group,
                               compute_dtype) for group, members in groups.items()]
            self.units.append(flats)
            for flat in flats:
                for refs in flat.refs:
                    for m, attr in refs:
                        m._parameters.pop(attr, None)
                flat.set_attrs(None)
        self.flat_params = [flat for flats in self.units for flat in flats]
        self.shards = nn.ParameterList([flat.shard for flat in self.flat_params])
        self._gathered: dict[int, FlatParam] = {}  # storage address of a gathered vector -> its FlatParam
        for u, unit in enumerate(unit_modules):
            unit.register_forward_pre_hook(lambda m, args, u=u: self._unshard(self.units[u]))
            unit.register_forward_hook(lambda m, args, out, u=u: self._reshard(self.units[u]))

    # -- forward and backward ---------------------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        root = self.units[-1]
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            self._unshard(root)
            try:
                return self.module(*args, **kwargs)
            finally:
                self._reshard(root)

    def _unshard(self, flats: list[FlatParam]) -> None:
        for flat in flats:
            full = flat.gather()
            self._gathered[full.untyped_storage().data_ptr()] = flat
            flat.set_attrs(list(_Unshard.apply(flat.shard, flat, full)))

    def _reshard(self, flats: list[FlatParam]) -> None:
        for flat in flats:
            flat.set_attrs(None)
        ids = {id(f) for f in flats}
        self._gathered = {k: f for k, f in self._gathered.items() if id(f) not in ids}

    def _pack(self, t: Tensor) -> Any:
        flat = self._gathered.get(t.untyped_storage().data_ptr()) if t.layout == torch.strided else None
        if flat is None:
            return t
        return flat, t.storage_offset(), t.size(), t.stride()

    @staticmethod
    def _unpack(packed: Any) -> Tensor:
        if isinstance(packed, Tensor):
            return packed
        flat, offset, size, stride = packed
        return flat.gathered_for_backward().as_strided(size, stride, offset)

    # -- optimizer, clipping, checkpoints ---------------------------------------------------------------

    def shards_by_group(self) -> dict[str, list[nn.Parameter]]:
        out: dict[str, list[nn.Parameter]] = {}
        for flat in self.flat_params:
            out.setdefault(flat.group, []).append(flat.shard)
        return out

    def finish_gradient_synchronization(self) -> None:
        """Nothing to wait for: the reduce-scatters ran during backward (the same API as DDP)."""

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float, eps: float = 1e-6) -> Tensor:
        """Global L2 norm over all shards' gradients (summed over ranks), clipped as optim.clip_grad_norm_."""
        grads = [f.shard.grad for f in self.flat_params if f.shard.grad is not None]
        device = self.flat_params[0].shard.device
        squares = torch.zeros((), device=device, dtype=torch.float32)
        if grads:
            squares = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)).square().sum()
        if is_distributed():
            dist.all_reduce(squares)
        total = squares.sqrt()
        if grads:
            torch._foreach_mul_(grads, torch.clamp(max_norm / (total + eps), max=1.0))
        return total

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, Tensor] | None:
        """Collective: the unwrapped module's state_dict (float32 parameters on the CPU) on rank 0, None elsewhere."""
        out: dict[str, Tensor] = {}
        for flat in self.flat_params:
            full = _all_gather(flat.shard.detach(), self.world_size)
            if rank() == 0:
                for names, view in zip(flat.names, flat.views(full)):
                    for name in names:
                        out[name] = view.cpu().clone()
        if rank() != 0:
            return None
        return {**{k: v.cpu() for k, v in self.module.state_dict().items()}, **out}


def full_optimizer_state_dict(fsdp: FSDP, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Collective: the optimizer's state with every shard-shaped tensor gathered into the unit's unpadded
    flat vector (CPU, rank 0; None elsewhere). It does not depend on the number of ranks."""
    local = optimizer.state_dict()
    flats = _flats_in_optimizer_order(fsdp, optimizer)
    state: dict[int, dict[str, Any]] = {}
    for i, s in local["state"].items():
        flat = flats[i]
        state[i] = {}
        for key, value in s.items():
            if isinstance(value, Tensor) and value.shape == flat.shard.shape:
                value = _all_gather(value.detach(), fsdp.world_size)[: flat.numel].cpu()
            state[i][key] = value
    return {"state": state, "param_groups": local["param_groups"]} if rank() == 0 else None


def load_full_optimizer_state_dict(fsdp: FSDP, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """Inverse of full_optimizer_state_dict, on every rank."""
    flats = _flats_in_optimizer_order(fsdp, optimizer)
    state = {}
    for i, s in state_dict["state"].items():
        flat = flats[int(i)]
        state[i] = {k: flat.slice_of(v).clone() if isinstance(v, Tensor) and v.dim() == 1 and v.numel() == flat.numel else v
                    for k, v in s.items()}
    optimizer.load_state_dict({"state": state, "param_groups": state_dict["param_groups"]})


def _flats_in_optimizer_order(fsdp: FSDP, optimizer: torch.optim.Optimizer) -> list[FlatParam]:
    by_shard = {id(flat.shard): flat for flat in fsdp.flat_params}
    return [by_shard[id(p)] for group in optimizer.param_groups for p in group["params"]]
