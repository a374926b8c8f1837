"""torch.profiler traces (Chrome/Perfetto JSON) with a named range per layer, added from outside the model.

`layer_ranges(model)` hangs hooks on every Transformer block, its attention and its MLP: a forward pre-hook
opens a `record_function` range (and an NVTX range on CUDA, for Nsight Systems) and the forward hook closes
it; full backward pre/post hooks do the same for the backward pass. The model code stays free of profiling
calls, and the hooks are removed when the context exits. Range names are the modules' qualified names:
`layers.3.attn.forward`, `layers.3.ffn.backward`, `layers.3.forward`, ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from scratchlm.atomic import atomic_path
from scratchlm.model import CausalSelfAttention, SwiGLU
from scratchlm.model.transformer import Block
from scratchlm.profiling.timing import synchronize

# Modules that get a range: a block and its two halves (norms and RoPE are small enough to read off the ops).
RANGED_MODULES = (Block, CausalSelfAttention, SwiGLU)


class _RangeStack:
    """Open ranges in LIFO order. Module hooks nest properly (a block's range encloses its attention's), so
    one stack per direction (forward, backward) pairs every close with its open."""

    def __init__(self, nvtx: bool) -> None:
        self.nvtx = nvtx
        self.open: list[record_function] = []

    def push(self, name: str) -> None:
        rf = record_function(name)
        rf.__enter__()
        self.open.append(rf)
        if self.nvtx:
            torch.cuda.nvtx.range_push(name)

    def pop(self) -> None:
        if not self.open:  # a hook registered mid-forward; nothing of ours to close
            return
        self.open.pop().__exit__(None, None, None)
        if self.nvtx:
            torch.cuda.nvtx.range_pop()

    def close_all(self) -> None:
        """Close ranges left open by an exception inside a forward (its post-hook never ran)."""
        while self.open:
            self.pop()


@contextmanager
def layer_ranges(model: nn.Module, nvtx: bool | None = None, backward: bool = True) -> Iterator[list[str]]:
    """Within the block, each block/attention/MLP forward (and backward) runs inside a named profiler range.

    Yields the range names. `nvtx` (default: whether the model is on CUDA) also emits NVTX ranges. Use it in
    eager mode: under torch.compile, Inductor fuses kernels across module boundaries, so ranges per layer
    would not describe the compiled kernels (and hooks would force a recompile).
    """
    if nvtx is None:
        nvtx = any(p.is_cuda for p in model.parameters())
    fwd, bwd = _RangeStack(nvtx), _RangeStack(nvtx)
    names: list[str] = []
    with ExitStack() as hooks:
        for qualname, module in model.named_modules():
            if not isinstance(module, RANGED_MODULES):
                continue
            names.append(f"{qualname}.forward")
            handles = [module.register_forward_pre_hook(_opener(fwd, f"{qualname}.forward")),
                       module.register_forward_hook(lambda *_: fwd.pop())]
            if backward:
                names.append(f"{qualname}.backward")
                handles += [module.register_full_backward_pre_hook(_opener(bwd, f"{qualname}.backward")),
                            module.register_full_backward_hook(lambda *_: bwd.pop())]
            for handle in handles:
                hooks.callback(handle.remove)
        hooks.callback(fwd.close_all)
        hooks.callback(bwd.close_all)
        yield names


def _opener(stack: _RangeStack, name: str) -> Callable[..., None]:
    def hook(*_: object) -> None:
        stack.push(name)

    return hook


@contextmanager
def phase_range(name: str, nvtx: bool = False) -> Iterator[None]:
    """A profiler range (plus an NVTX range when `nvtx`) around one phase of a step: forward, backward, optimizer."""
    with record_function(name):
        if nvtx:
            torch.cuda.nvtx.range_push(name)
        try:
            yield
        finally:
            if nvtx:
                torch.cuda.nvtx.range_pop()


def profile_steps(step: Callable[[], object], steps: int, device: torch.device,
                  trace_path: str | Path | None = None) -> profile:
    """Run `step` `steps` times under torch.profiler (CPU ops, plus CUDA kernels on a GPU), each inside a
    `step N` range; write the Chrome/Perfetto trace to `trace_path` (atomically) when given."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        for i in range(steps):
            with record_function(f"step {i}"):
                step()
        synchronize(device)  # kernels still queued at exit would be missing from the trace
    if trace_path is not None:
        with atomic_path(trace_path) as tmp:
            prof.export_chrome_trace(str(tmp))
    return prof


def top_ops_table(prof: profile, device: torch.device, rows: int = 15) -> str:
    """The `rows` most expensive ops by self time (so that enclosing ranges do not count twice): GPU time on
    CUDA, CPU time elsewhere."""
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=60)


def top_ops(prof: profile, device: torch.device, rows: int | None = 15, per: int = 1) -> list[dict[str, float | str]]:
    """`top_ops_table` as data: the `rows` (None: all) ops with the most self time (GPU time on CUDA, CPU time elsewhere),
    each {name, us (per unit), calls (per unit), share (of all self time)}, `per` = the units the profile
    covered (e.g. decode steps), so the numbers read per step. Ranges (`record_function`) are not ops. On CUDA
    the ops are the kernels (and copies) themselves: the CPU op that launched a kernel carries its time too,
    and counting both would count it twice."""
    on_device = device.type == "cuda"
    attr = "self_device_time_total" if on_device else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr) > 0 and not e.is_user_annotation
              and (not on_device or e.device_type != DeviceType.CPU)]
    total = sum(getattr(e, attr) for e in events) or 1.0
    events.sort(key=lambda e: -getattr(e, attr))
    return [{"name": e.key, "us": getattr(e, attr) / per, "calls": e.count / per, "share": getattr(e, attr) / total}
            for e in events[:rows]]
