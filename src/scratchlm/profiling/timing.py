"""Device-synchronized timing: a stopwatch per device and robust statistics over repeats.

GPU work is asynchronous: `time.perf_counter()` around a CUDA call measures the launch, not the work. On CUDA
the stopwatch records an event before and after the work on the current stream and waits for the second,
so the interval is the GPU's; on CPU, where torch ops return when done, it is perf_counter.
Warm-up calls (compilation, allocator growth, cuDNN/cuBLAS heuristics) run before the clock starts, and
the median with the interquartile range summarises repeats: one slow outlier (a GC pause, another process
on the core) moves the mean but not the median.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch


class Stopwatch(Protocol):
    def start(self) -> None: ...

    def stop(self) -> float:
        """Seconds since start(), once the work queued in between has finished."""
        ...


class PerfCounterStopwatch:
    """Host wall-clock time; `now` is injectable so that tests can drive it with a fake clock."""

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self._now = now
        self._t0: float | None = None

    def start(self) -> None:
        self._t0 = self._now()

    def stop(self) -> float:
        if self._t0 is None:
            raise RuntimeError("stop() before start()")
        elapsed, self._t0 = self._now() - self._t0, None
        return elapsed


class CudaEventStopwatch:
    """GPU time between two CUDA events on the current stream; stop() waits for the end event."""

    def __init__(self, device: torch.device | None = None) -> None:
        self._device = device
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._started = False

    def start(self) -> None:
        self._start.record(torch.cuda.current_stream(self._device))
        self._started = True

    def stop(self) -> float:
        if not self._started:
            raise RuntimeError("stop() before start()")
        self._end.record(torch.cuda.current_stream(self._device))
        self._end.synchronize()
        self._started = False
        return self._start.elapsed_time(self._end) / 1e3  # elapsed_time is in milliseconds


def stopwatch_for(device: torch.device) -> Stopwatch:
    return CudaEventStopwatch(device) if device.type == "cuda" else PerfCounterStopwatch()


def synchronize(device: torch.device) -> None:
    """Wait until `device` has finished all queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile by linear interpolation between order statistics (numpy's default 'linear' method)."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


@dataclass(frozen=True)
class TimingStats:
    """Summary of repeated durations, in seconds."""

    median: float
    q25: float
    q75: float
    min: float
    max: float
    mean: float
    repeats: int

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> TimingStats:
        if not samples:
            raise ValueError("no timing samples (repeats must be >= 1)")
        s = sorted(samples)
        return cls(median=quantile(s, 0.5), q25=quantile(s, 0.25), q75=quantile(s, 0.75), min=s[0], max=s[-1],
                   mean=sum(s) / len(s), repeats=len(s))

    @property
    def iqr(self) -> float:
        return self.q75 - self.q25

    @property
    def spread(self) -> float:
        """Half the interquartile range: median ± spread spans the middle half of the repeats (when symmetric)."""
        return self.iqr / 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(fn: Callable[[], object], repeats: int, warmup: int = 0, stopwatch: Stopwatch | None = None,
            calls_per_repeat: int = 1) -> TimingStats:
    """Seconds per call of `fn`: `warmup` untimed calls, then `repeats` windows of `calls_per_repeat` calls.

    `stopwatch` defaults to perf_counter (CPU); pass `stopwatch_for(device)` for GPU work. Several calls per
    window amortise the launch gap of very short GPU work; one call per window gives per-call spread.
    """
    if repeats < 1 or calls_per_repeat < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1, calls_per_repeat >= 1, warmup >= 0; got {repeats}, {calls_per_repeat}, {warmup}")
    stopwatch = stopwatch or PerfCounterStopwatch()
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        stopwatch.start()
        for _ in range(calls_per_repeat):
            fn()
        samples.append(stopwatch.stop() / calls_per_repeat)
    return TimingStats.from_samples(samples)


def graph_seconds(calls: Sequence[Callable[[], object]], replays: int = 5) -> float:
    """Seconds per call of `calls` captured back to back into one CUDA graph, median over `replays` replays:
    GPU time of kernels as decoding runs them (graph replays: no launch overhead, per-kernel latency kept).
    Give each call its own copy of the data it reads, with the copies totalling several times the L2 cache,
    to time it cold, as a decode step finds its weights. The first two calls run once before the capture
    (compilation, allocator)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls[:2]:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / len(calls))
    return sorted(times)[len(times) // 2]


def copy_bandwidth(device: torch.device | None = None, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s (each byte read once and written once) of `device` (default:
    the current CUDA device): `repeats` back-to-back copies timed by `stopwatch_for(device)` after two warm-up
    copies. Not in a CUDA graph: there a copy becomes a memcpy node, which measured ~20% slower on an H100 (2.4
    vs 3.0 TB/s) than the copy kernel a stream runs, and the kernel is the benchmarks' bandwidth yardstick."""
    device = torch.device("cuda") if device is None else device
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    stopwatch = stopwatch_for(device)
    synchronize(device)
    stopwatch.start()
    for _ in range(repeats):
        dst.copy_(src)
    return 2 * nbytes * repeats / stopwatch.stop()
