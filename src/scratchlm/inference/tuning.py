"""Fitting the decode step to the GPU it runs on: the one-row GEMV's tiles, chosen by timing the model's own
batch-1 decode step.

A batch-1 decode step is a chain of GEMVs, each overlapping the one before it (programmatic dependent launch),
so the tiles that read one matrix fastest alone (benchmarks/gemv.py) are not the fastest in the chain, and
which are depends on the model: on an H100, four rows a program instead of two made the step 11% faster at
gpt-1.3b and 8% at gpt2-small but 8% slower at gpt-350m. So an engine times one decode step of its model
under each rule of `scratchlm.kernels.gemv.TILE_RULES` (a CUDA graph over a scratch one-slot cache, replayed,
the rules interleaved) and keeps the fastest for the model's weight shapes. About a second, once per model
shape and process; the first run on a machine also compiles the candidate kernels (Triton caches them).
"""

from __future__ import annotations

import importlib
import logging
import statistics

import torch
from torch import nn

from scratchlm.inference.graphs import GraphCache
from scratchlm.inference.kv_cache import KVCache
from scratchlm.model import layers

log = logging.getLogger(__name__)

# (device, weight shapes) -> the seconds per decode step of each rule, for models already tuned
_tuned: dict[tuple[torch.device, frozenset[tuple[int, int]]], dict[str, float]] = {}


def uses_gemv(model: nn.Module) -> bool:
    """Whether the model's batch-1 decode steps run the one-row GEMV (a half-precision model on CUDA)."""
    weight = next((p for p in model.parameters() if p.dim() == 2), None)
    if weight is None:  # no matrix as such (FSDP's flat shards): nothing to tune
        return False
    with torch.no_grad():
        row = torch.zeros(1, weight.shape[1], dtype=weight.dtype, device=weight.device)
        return layers.one_row_kernels(row, weight) is not None


def tune_gemv_tiles(model: nn.Module, max_len: int = 256, replays: int = 10, rounds: int = 3
                    ) -> dict[str, float] | None:
    """Time a batch-1 decode step of `model` at position max_len // 2 of a `max_len` cache under each tile rule
    (`rounds` x `replays` graph replays each, interleaved), use the fastest for the model's weight shapes, and
    return {rule: median seconds per step}. None when the model's decode does not run the GEMV."""
    if not uses_gemv(model):
        return None
    gemv = importlib.import_module("scratchlm.kernels.gemv")
    param = next(model.parameters())
    shapes = frozenset(tuple(p.shape) for p in model.parameters() if p.dim() == 2)
    key = (param.device, shapes)
    if key not in _tuned:
        _tuned[key] = _time_rules(model, gemv, shapes, max_len, replays, rounds)
        log.info("one-row GEMV tiles: %s", ", ".join(f"{rule} {t * 1e6:.0f} us" for rule, t in _tuned[key].items()))
    gemv.use_tile_rule(min(_tuned[key], key=_tuned[key].get), shapes)
    return _tuned[key]


@torch.no_grad()
def _time_rules(model: nn.Module, gemv, shapes: frozenset[tuple[int, int]], max_len: int, replays: int,
                rounds: int) -> dict[str, float]:
    param = next(model.parameters())
    max_len = min(max_len, model.config.context_length)
    cache = KVCache(model.config, 1, max_len, device=param.device, dtype=param.dtype)
    token = torch.zeros(1, 1, dtype=torch.long, device=param.device)
    position = torch.full((1, 1), max_len // 2, dtype=torch.long, device=param.device)
    graphs = GraphCache(param.device, max_graphs=len(gemv.TILE_RULES))
    times: dict[str, list[float]] = {rule: [] for rule in gemv.TILE_RULES}
    step = lambda: model(token, position, kv_cache=cache)  # noqa: E731
    for _ in range(rounds):
        for rule in times:
            gemv.use_tile_rule(rule, shapes)
            graphs.run(rule, step)  # the first call of a rule captures its graph
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(replays):
                graphs.run(rule, step)
            end.record()
            end.synchronize()
            times[rule].append(start.elapsed_time(end) / 1e3 / replays)
    return {rule: statistics.median(t) for rule, t in times.items()}
