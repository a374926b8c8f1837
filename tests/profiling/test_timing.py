"""Timing statistics against numpy, and `measure` driven by a fake clock (warm-up excluded, windows averaged)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scratchlm.profiling.timing import PerfCounterStopwatch, TimingStats, measure, quantile


@pytest.mark.parametrize("n", [1, 2, 3, 8, 101])
def test_stats_match_numpy(n):
    rng = np.random.default_rng()
    samples = rng.lognormal(mean=-5, sigma=0.5, size=n)  # skewed, like real step times
    stats = TimingStats.from_samples(list(samples))
    assert stats.median == pytest.approx(np.median(samples), rel=1e-12)
    assert stats.q25 == pytest.approx(np.percentile(samples, 25), rel=1e-12)
    assert stats.q75 == pytest.approx(np.percentile(samples, 75), rel=1e-12)
    assert (stats.min, stats.max) == (samples.min(), samples.max())
    assert stats.mean == pytest.approx(samples.mean(), rel=1e-12)
    assert stats.iqr == pytest.approx(np.subtract(*np.percentile(samples, [75, 25])), rel=1e-9, abs=1e-15)
    assert stats.spread == pytest.approx(stats.iqr / 2) and stats.repeats == n


def test_quantile_matches_numpy_at_any_q():
    rng = np.random.default_rng()
    values = sorted(rng.normal(size=17))
    for q in rng.uniform(size=20):
        assert quantile(values, q) == pytest.approx(np.quantile(values, q), rel=1e-12, abs=1e-15)


class FakeClock:
    """A clock that only moves when the timed function says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_measure_excludes_warmup_and_averages_windows():
    rng = np.random.default_rng()
    warmup, repeats, per_window = 3, 7, 4
    durations = np.concatenate([np.full(warmup, 100.0),  # slow warm-up (compilation): must not show up
                                rng.uniform(0.01, 0.02, size=repeats * per_window)])
    clock, calls = FakeClock(), iter(durations)

    def work() -> None:
        clock.now += next(calls)

    stats = measure(work, repeats=repeats, warmup=warmup, stopwatch=PerfCounterStopwatch(now=clock),
                    calls_per_repeat=per_window)
    per_call = durations[warmup:].reshape(repeats, per_window).mean(axis=1)
    assert stats.repeats == repeats
    assert stats.median == pytest.approx(np.median(per_call), rel=1e-9)
    assert stats.max == pytest.approx(per_call.max(), rel=1e-9) and stats.max < 1
    assert next(calls, None) is None  # every duration consumed: warmup + repeats x per_window calls


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="repeats"):
        measure(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="no timing samples"):
        TimingStats.from_samples([])
    with pytest.raises(RuntimeError, match="before start"):
        PerfCounterStopwatch().stop()


def test_copy_bandwidth_on_cpu_is_bytes_moved_over_time():
    """On CPU the stopwatch is the host clock: 16 MiB copied 10 times gives a rate between 100 MB/s and 10 TB/s
    (read + written bytes; far outside either bound means the bytes or the time are miscounted)."""
    from scratchlm.profiling import copy_bandwidth

    assert 1e8 < copy_bandwidth(torch.device("cpu"), nbytes=1 << 24) < 1e13


@pytest.mark.gpu
def test_graph_seconds_agrees_with_the_copy_bandwidth():
    """A 256 MB in-place scale reads and writes what a 256 MB copy does: timed per call inside a graph, it
    takes about as long as copy_bandwidth says (within 2x: both are streaming kernels), and the time per call
    does not depend on how many calls the graph holds."""
    from scratchlm.profiling import copy_bandwidth, graph_seconds

    x = torch.randn(1 << 26, device="cuda")
    expected = 2 * x.nbytes / copy_bandwidth()
    per_call = [graph_seconds([lambda: x.mul_(1.0)] * n) for n in (4, 16)]
    for seconds in per_call:
        assert expected / 2 < seconds < expected * 2, (seconds, expected)
    assert abs(per_call[0] - per_call[1]) < 0.25 * per_call[1]
