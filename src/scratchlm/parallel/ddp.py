"""Data parallelism: every rank holds the whole model, computes gradients on its own batch, and the ranks
average their gradients before each optimizer step, so that every replica takes the same step.

`DDP(model)` (per-parameter mode) all-reduces each gradient as soon as autograd has accumulated it
(`register_post_accumulate_grad_hook`), while backward goes on computing earlier layers: communication
overlaps computation. `DDP(model, bucket_size_mb=25)` (bucketed mode) packs gradients into buckets of about
that size and launches one all-reduce per bucket: fewer, larger messages amortise the per-collective latency.

Design choices:
- Buckets hold parameters in reverse registration order: backward produces gradients roughly from the last
  layer to the first, so the first bucket fills first. A parameter larger than the bucket size gets a
  bucket of its own; a bucket never mixes dtypes or devices.
- Buckets are launched strictly in bucket order (a full bucket waits for the ones before it). Collectives
  on a process group must be issued in the same order on every rank; if gradients arrive in a different
  order on two ranks (data-dependent control flow), launching in arrival order could pair bucket 3 of one
  rank with bucket 4 of another.
- `finish_gradient_synchronization()` launches every bucket that has not completed (a parameter that got
  no gradient on this rank contributes zeros), waits for all of them and divides by the world size. With
  `find_unused_parameters=True` it also all-reduces one flag per parameter, and a parameter that got no
  gradient on *any* rank keeps `grad = None` (so the optimizer skips it, as in a single process); without
  it such a parameter ends the step with a zero gradient (no extra collective per step: our models use
  every parameter).
- Tied weights are one Parameter object and get one hook (autograd sums both uses before accumulating);
  parameters with requires_grad=False get no hook and no bucket.
- `no_sync()` turns the hooks off: inside it gradients accumulate locally (gradient accumulation); the last
  micro-step runs outside it and reduces the accumulated sums. A second backward before
  finish_gradient_synchronization() outside no_sync() raises (it would add to already-reduced gradients).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from scratchlm.parallel.dist import broadcast_tensors, unique_params, world_size


@dataclass
class Bucket:
    params: list[nn.Parameter]
    flat: Tensor | None  # (sum of numels,) for several params; None: one param, reduced in its own .grad
    ready: int = 0  # params whose gradient is accumulated this step
    work: Any = None  # the in-flight all-reduce (dist.Work)


def make_buckets(params: list[nn.Parameter], bucket_size_mb: float | None) -> list[Bucket]:
    """Params in reverse order, greedily packed into buckets of at most bucket_size_mb MiB (None: one each)."""
    cap = None if bucket_size_mb is None else bucket_size_mb * 2**20
    groups: list[list[nn.Parameter]] = []
    size = 0
    for p in reversed(params):
        nbytes = p.numel() * p.element_size()
        current = groups[-1] if groups else None
        fits = (current is not None and cap is not None and size + nbytes <= cap
                and (current[0].dtype, current[0].device) == (p.dtype, p.device))
        if fits:
            current.append(p)
            size += nbytes
        else:
            groups.append([p])
            size = nbytes
    return [Bucket(group, None if len(group) == 1 else group[0].new_empty(sum(p.numel() for p in group)))
            for group in groups]


class DDP(nn.Module):
    """Wraps `module` for data-parallel training. Call `finish_gradient_synchronization()` after backward
    and before clipping / the optimizer step."""

    def __init__(self, module: nn.Module, bucket_size_mb: float | None = None, find_unused_parameters: bool = False):
        super().__init__()
        self.module = module
        self.world_size = world_size()
        self.find_unused_parameters = find_unused_parameters
        # Replicas start equal: rank 0's parameters and buffers (its RNG may differ from the others').
        broadcast_tensors(list(module.parameters()) + list(module.buffers()))
        self.params = unique_params(module)
        self.buckets = make_buckets(self.params, bucket_size_mb)
        self._where = {id(p): i for i, bucket in enumerate(self.buckets) for p in bucket.params}
        self._next = 0  # first bucket not launched yet this step
        self._sync = True
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._grad_ready)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes inside accumulate gradients locally without communicating."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    # -- during backward --------------------------------------------------------------------------------

    def _grad_ready(self, p: Tensor) -> None:
        if not self._sync or self.world_size == 1:
            return
        bucket = self.buckets[self._where[id(p)]]
        if bucket.work is not None:  # its all-reduce already ran on an earlier backward's gradient
            raise RuntimeError("a second backward before finish_gradient_synchronization(): for gradient "
                               "accumulation run every micro-step but the last inside ddp.no_sync()")
        bucket.ready += 1
        while self._next < len(self.buckets) and self._bucket_full(self.buckets[self._next]):
            self._launch(self.buckets[self._next])
            self._next += 1

    @staticmethod
    def _bucket_full(bucket: Bucket) -> bool:
        return bucket.ready == len(bucket.params)

    def _launch(self, bucket: Bucket) -> None:
        """Start the all-reduce (sum) of the bucket's gradients; a missing gradient counts as zeros."""
        for p in bucket.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if bucket.flat is None:
            bucket.work = dist.all_reduce(bucket.params[0].grad, async_op=True)
            return
        torch.cat([p.grad.reshape(-1) for p in bucket.params], out=bucket.flat)
        bucket.work = dist.all_reduce(bucket.flat, async_op=True)

    # -- after backward ---------------------------------------------------------------------------------

    @torch.no_grad()
    def finish_gradient_synchronization(self) -> None:
        """Launch what backward did not (in bucket order), wait for every all-reduce, average."""
        if not self._sync or self.world_size == 1:
            return
        # Flags before the launches below zero-fill missing grads; reduced after them, so that every rank
        # issues its collectives in the same order (buckets, then flags).
        has_grad = [p.grad is not None for p in self.params]
        for bucket in self.buckets[self._next:]:
            self._launch(bucket)
        unused = self._globally_unused(has_grad) if self.find_unused_parameters else set()
        for bucket in self.buckets:
            bucket.work.wait()
            if bucket.flat is None:
                bucket.params[0].grad.div_(self.world_size)
            else:
                bucket.flat.div_(self.world_size)
                for p, g in zip(bucket.params, bucket.flat.split([p.numel() for p in bucket.params])):
                    p.grad.copy_(g.view_as(p))
            bucket.work, bucket.ready = None, 0
        for p in self.params:
            if id(p) in unused:
                p.grad = None
        self._next = 0

    def _globally_unused(self, has_grad: list[bool]) -> set[int]:
        """ids of the params that have no gradient on any rank this step (one small all-reduce)."""
        got = torch.tensor(has_grad, dtype=torch.int32, device=self.params[0].device)
        dist.all_reduce(got)
        return {id(p) for p, n in zip(self.params, got.tolist()) if n == 0}
