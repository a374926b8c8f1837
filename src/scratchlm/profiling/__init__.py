"""Profiling and benchmarking: device-synchronized timing, per-phase step benchmarks, profiler traces with
per-layer ranges, and memory accounting.

    from scratchlm.profiling import BenchConfig, run_model_bench, format_table
    result = run_model_bench(BenchConfig(preset="cpu-tiny", batch=4, seq=64, repeats=5))
    print(format_table(result.record))
"""

from scratchlm.profiling.memory import MemoryBreakdown, dump_snapshot, record_memory_history
from scratchlm.profiling.model_bench import BenchConfig, BenchResult, Variant, format_table
from scratchlm.profiling.model_bench import run as run_model_bench
from scratchlm.profiling.timing import (
    CudaEventStopwatch,
    PerfCounterStopwatch,
    Stopwatch,
    TimingStats,
    copy_bandwidth,
    graph_seconds,
    measure,
    stopwatch_for,
    synchronize,
)
from scratchlm.profiling.trace import layer_ranges, profile_steps, top_ops, top_ops_table

__all__ = [
    "BenchConfig", "BenchResult", "CudaEventStopwatch", "MemoryBreakdown", "PerfCounterStopwatch", "Stopwatch",
    "TimingStats", "Variant", "copy_bandwidth", "dump_snapshot", "format_table", "graph_seconds", "layer_ranges",
    "measure", "profile_steps", "record_memory_history", "run_model_bench", "stopwatch_for", "synchronize",
    "top_ops", "top_ops_table",
]
