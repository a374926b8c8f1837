"""Replaying fixed-shape device work as CUDA graphs, one graph per key.

A decode step launches hundreds of small kernels; on a slow host their launches, not the GPU, set the pace.
Captured once as a CUDA graph, the same work is one `replay()`. The first call of a key runs the function for
real on a side stream (warming up what initialises lazily: cuBLAS handles, Triton autotuning, compilation),
then captures it; every later call of that key replays the graph. Off CUDA, or disabled, calls just run.

The function must read and write only tensors that outlive its graphs (allocated by the caller: caches,
state, output buffers) and must not sync with the host. Its temporaries come from one memory pool shared by
all graphs of a `GraphCache`, which is safe because they are replayed one at a time and none leaves a live
temporary behind. At most `max_graphs` are kept: past that the least recently replayed one is dropped (a
server meeting many prompt shapes would otherwise keep capturing for ever).

`compiled` is the other way to fuse a step: torch.compile, once per shape, before the graph captures it.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

from scratchlm import kernels


def compiled(fn: Callable, device: torch.device, enabled: bool, max_shapes: int = 256) -> Callable:
    """fn through torch.compile (one compilation per shape, never a dynamic-shape kernel) when enabled and on
    CUDA, else fn. Our kernels must be loaded first: they are registered with Inductor here. Up to max_shapes
    compilations of fn (Dynamo's default, 8 per function, would quietly run later shapes uncompiled: a
    speculative decoder meets a round shape per draft length, feed and sampling setting)."""
    if not (enabled and device.type == "cuda"):
        return fn
    kernels.register_compile_fallbacks()
    compiled_fn = torch.compile(fn, dynamic=False)

    def run(*args: object, **kwargs: object) -> object:
        with torch._dynamo.config.patch(recompile_limit=max_shapes):
            return compiled_fn(*args, **kwargs)

    return run


class GraphCache:
    def __init__(self, device: torch.device, enabled: bool = True, max_graphs: int = 256):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.device = device
        self.enabled = enabled and device.type == "cuda"
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[Hashable, torch.cuda.CUDAGraph] = OrderedDict()  # least recently used first
        self._pool = torch.cuda.graph_pool_handle() if self.enabled else None

    def run(self, key: Hashable, fn: Callable[[], None]) -> None:
        """fn() (its effect, not a result), replayed from the graph of `key` after its first call."""
        if not self.enabled:
            fn()
            return
        graph = self.graphs.get(key)
        if graph is not None:
            self.graphs.move_to_end(key)
            graph.replay()
            return
        if len(self.graphs) == self.max_graphs:
            self.graphs.popitem(last=False)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # No garbage collection while capturing: a collected reference cycle that holds CUDA graphs (an engine
        # dropped by its caller) would destroy them mid-capture, which invalidates the capture (the likely cause
        # of a failure seen once on the H100: a 1.3B engine's capture, just after a 124M engine was dropped).
        collecting = gc.isenabled()
        gc.disable()
        try:
            with torch.cuda.graph(graph, pool=self._pool):  # records fn's kernels without running them
                fn()
        finally:
            if collecting:
                gc.enable()
        self.graphs[key] = graph  # only a complete capture is kept (a failed one raises above)
