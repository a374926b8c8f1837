"""Where training memory goes: exact sizes of parameters, gradients and optimizer state, the peak (CUDA allocator
statistics, or on CPU the profiler's allocation events), and a CUDA allocator snapshot (open it at
https://pytorch.org/memory_viz).

Parameters, buffers, gradients and optimizer state are summed from the tensors themselves (each tensor once,
so tied weights count once). What the allocator held at its peak beyond those is activations saved for the
backward pass plus temporaries (and allocator rounding). The peak usually falls early in the backward pass,
when most activations are still alive and only some gradients exist yet, so that remainder is a lower bound
on the activation memory; `saved_activations` (memory allocated after the forward pass minus before it)
measures them directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile, record_function

from scratchlm.atomic import atomic_path

# Allocation events the recorder keeps (oldest dropped first): a bound on its host memory when recording runs
# long. The recording here covers one step, which for these models is far fewer events.
MAX_HISTORY_ENTRIES = 100_000


def tensor_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of the distinct tensors in `tensors` (a tensor listed twice, such as a tied weight, counts once)."""
    seen: dict[tuple[int, int], int] = {}
    for t in tensors:
        seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
    return sum(seen.values())


def parameter_bytes(model: nn.Module) -> int:
    return tensor_bytes(model.parameters())


def buffer_bytes(model: nn.Module) -> int:
    """Non-trainable tensors the model holds (the RoPE cos/sin tables)."""
    return tensor_bytes(model.buffers())


def gradient_bytes(model: nn.Module) -> int:
    """Bytes of the gradients that exist now (after backward and before zero_grad(set_to_none=True))."""
    return tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)


def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes of every tensor in the optimizer's state (AdamW moments, Muon momentum); a CombinedOptimizer's
    members are summed. Zero before the first step, when the state is created."""
    members = getattr(optimizer, "optimizers", [optimizer])
    return tensor_bytes(value for opt in members for state in opt.state.values() for value in state.values()
                        if isinstance(value, Tensor))


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes; the CUDA-only fields are None on other devices."""

    parameters: int
    buffers: int
    gradients: int
    optimizer_state: int
    peak_allocated: int | None = None
    saved_activations: int | None = None

    @property
    def activations_and_temporaries(self) -> int | None:
        """The peak beyond parameters, buffers, gradients and optimizer state (see the module docstring)."""
        if self.peak_allocated is None:
            return None
        return self.peak_allocated - self.parameters - self.buffers - self.gradients - self.optimizer_state

    def to_dict(self) -> dict[str, int | None]:
        return {**asdict(self), "activations_and_temporaries": self.activations_and_temporaries}

    def summary(self) -> str:
        """A few aligned lines: each part in MiB and as a share of the peak (where known)."""
        parts = [("parameters", self.parameters), ("buffers", self.buffers), ("gradients", self.gradients),
                 ("optimizer state", self.optimizer_state),
                 ("activations + temporaries", self.activations_and_temporaries),
                 ("activations saved by forward", self.saved_activations), ("peak allocated", self.peak_allocated)]
        lines = []
        for name, value in parts:
            if value is None:
                continue
            share = f"  {100 * value / self.peak_allocated:5.1f}%" if self.peak_allocated else ""
            lines.append(f"{name:<28} {value / 2**20:10.2f} MiB{share}")
        return "\n".join(lines)


class CpuAllocationTracker:
    """Net CPU tensor allocations within a `with` block, from torch.profiler's memory events.

    The CPU allocator keeps no statistics like torch.cuda.max_memory_allocated, and the process's resident
    size says little (freed memory stays with malloc, and the first steps fault in library code), so the
    profiler's record of every tensor allocation and free is summed in time order instead. `peak` is the
    highest net allocation since the block began; `net_at(mark)` the net allocation where `mark(name)` was
    called. Tensors alive before the block are not counted: add them from their sizes.
    """

    def __init__(self) -> None:
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._deltas: list[tuple[int, int]] = []  # (time ns, +bytes allocated or -bytes freed)
        self._marks: dict[str, int] = {}  # name -> time ns

    def __enter__(self) -> CpuAllocationTracker:
        self._prof.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._prof.__exit__(*exc)
        for event in self._prof.profiler.kineto_results.events():
            if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU:
                self._deltas.append((event.start_ns(), event.nbytes()))
            elif event.name().startswith(_MARK):
                self._marks[event.name().removeprefix(_MARK)] = event.start_ns()
        self._deltas.sort()

    def mark(self, name: str) -> None:
        with record_function(_MARK + name):
            pass

    def net_at(self, name: str) -> int:
        at = self._marks[name]
        return sum(nbytes for t, nbytes in self._deltas if t < at)

    @property
    def peak(self) -> int:
        running = peak = 0
        for _, nbytes in self._deltas:
            running += nbytes
            peak = max(peak, running)
        return peak


_MARK = "scratchlm.memory_mark:"


@contextmanager
def record_memory_history(device: torch.device, max_entries: int = MAX_HISTORY_ENTRIES) -> Iterator[None]:
    """Record every CUDA allocation and free (with Python stacks) within the block, for `dump_snapshot`."""
    if device.type != "cuda":
        raise ValueError(f"a memory snapshot needs a CUDA device (this run is on {device}); the parameter, "
                         "gradient and optimizer-state sizes are reported without it")
    torch.cuda.memory._record_memory_history(max_entries=max_entries, device=device)
    try:
        yield
    finally:
        torch.cuda.memory._record_memory_history(enabled=None, device=device)


def dump_snapshot(path: str | Path) -> None:
    """Write the recorded allocator history as a pickle (drag it onto https://pytorch.org/memory_viz)."""
    with atomic_path(path) as tmp:
        torch.cuda.memory._dump_snapshot(str(tmp))
