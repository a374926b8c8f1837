"""The process group: set up from torchrun's environment, torn down at exit, and small rank-aware helpers.

torchrun (torch.distributed.run) starts one process per rank and passes RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT in the environment; `init_process_group` reads them. NCCL carries GPU tensors,
gloo CPU tensors. Every collective is bounded by `timeout_s`: a rank that died or hangs makes the others
fail with a timeout instead of waiting forever (torchrun also stops all workers as soon as one exits
non-zero, which is the usual way a failure ends a run).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    """True inside a worker started by torchrun (or anything else that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_rank0() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def rank_device(device: torch.device) -> torch.device:
    """The device this rank computes on: `cuda` means this node's GPU number LOCAL_RANK."""
    if device.type == "cuda" and device.index is None and launched_by_torchrun():
        return torch.device("cuda", local_rank())
    return device


def init_distributed(device: torch.device, timeout_s: float) -> bool:
    """Join the process group described by torchrun's environment; False (and nothing done) outside torchrun
    or when already initialised. NCCL for a CUDA device, gloo otherwise."""
    if not launched_by_torchrun() or is_distributed():
        return False
    if device.type == "cuda":
        if device.index is None:
            raise ValueError("init_distributed needs the rank's device (see rank_device), got plain 'cuda'")
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timedelta(seconds=timeout_s), device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    quiet_other_ranks()
    log.info("process group: %d ranks (%s)", world_size(), dist.get_backend())
    return True


def quiet_other_ranks() -> None:
    """Only rank 0 logs below WARNING: N identical progress logs help nobody, errors from any rank do."""
    if rank() != 0:
        logging.getLogger().setLevel(logging.WARNING)


def teardown() -> None:
    if is_distributed():
        dist.destroy_process_group()


@contextmanager
def distributed(device: torch.device, timeout_s: float) -> Iterator[torch.device]:
    """`with distributed(device, timeout) as rank_dev:` joins the group (under torchrun) for the block and
    leaves it afterwards, also on errors, so that a failing rank exits promptly."""
    device = rank_device(device)
    started = init_distributed(device, timeout_s)
    try:
        yield device
    finally:
        if started:
            teardown()


def broadcast_tensors(tensors: Iterable[Tensor], src: int = 0) -> None:
    """Overwrite every tensor in place with src's values (asynchronous broadcasts, then one wait each)."""
    if not is_distributed():
        return
    works = [dist.broadcast(t.data, src=src, async_op=True) for t in tensors]
    for work in works:
        work.wait()


def all_reduce_mean(t: Tensor) -> Tensor:
    """The mean of t over the ranks (a new tensor; t itself when single-process)."""
    if not is_distributed():
        return t
    out = t.clone()
    dist.all_reduce(out)
    return out / world_size()


def unique_params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Trainable parameters in registration order, each once (tied weights are one Parameter object)."""
    seen: dict[int, torch.nn.Parameter] = {}
    for p in module.parameters():
        if p.requires_grad and id(p) not in seen:
            seen[id(p)] = p
    return list(seen.values())
