"""Batches: targets are inputs shifted by one, offsets uniform and a pure function of (seed, rank, step)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scratchlm.train.data import TokenData, resolve_device
from tests.train.conftest import write_markov_file


@pytest.fixture
def data(tmp_path) -> TokenData:
    return TokenData(write_markov_file(tmp_path / "t.bin", 1000, seed=3), seq_len=16)


def test_targets_are_inputs_shifted_by_one(data):
    x, y = data.batch(32, torch.device("cpu"), seed=0, step=5)
    assert x.shape == y.shape == (32, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    tokens = torch.from_numpy(np.asarray(data.tokens, dtype=np.int64))
    for o, row in zip(data.offsets(32, seed=0, step=5), x):
        assert torch.equal(row, tokens[o : o + 16])


def test_offsets_cover_every_start_uniformly(data):
    n_starts = len(data.tokens) - data.seq_len  # starts 0 .. len - seq_len - 1 leave room for the target
    offsets = np.concatenate([data.offsets(256, seed=0, step=s) for s in range(400)])
    assert offsets.min() == 0 and offsets.max() == n_starts - 1
    counts = np.bincount(offsets // 98, minlength=n_starts // 98 + 1)[: n_starts // 98]  # 10 equal bins
    expected = len(offsets) * 98 / n_starts
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 30, chi2  # 9 degrees of freedom: p < 0.001 beyond ~28


def test_batches_are_a_function_of_seed_rank_step(data):
    a = data.offsets(8, seed=1, step=7, micro_step=2, rank=0)
    assert np.array_equal(a, data.offsets(8, seed=1, step=7, micro_step=2, rank=0))
    others = [data.offsets(8, seed=2, step=7, micro_step=2), data.offsets(8, seed=1, step=8, micro_step=2),
              data.offsets(8, seed=1, step=7, micro_step=3), data.offsets(8, seed=1, step=7, micro_step=2, rank=1)]
    assert all(not np.array_equal(a, b) for b in others)


def test_eval_batches_walk_the_file_in_order(data):
    batches = list(data.eval_batches(10, torch.device("cpu")))
    x = torch.cat([b[0] for b in batches])
    n_windows = (len(data.tokens) - 1) // 16
    assert x.shape == (n_windows, 16)
    tokens = torch.from_numpy(np.asarray(data.tokens, dtype=np.int64))
    assert torch.equal(x.flatten(), tokens[: n_windows * 16])
    assert len(list(data.eval_batches(10, torch.device("cpu"), max_batches=2))) == 2


def test_too_short_file_is_a_clear_error(tmp_path):
    path = write_markov_file(tmp_path / "short.bin", 10, seed=0)
    with pytest.raises(ValueError, match="fewer than one window"):
        TokenData(path, seq_len=16)


@pytest.mark.parametrize("name, message", [
    ("cuda:99" if torch.cuda.is_available() else "cuda", "CUDA" if not torch.cuda.is_available() else "does not exist"),
    ("tpu", "unknown device"),
])
def test_missing_device_is_a_clear_error(name, message):
    with pytest.raises(ValueError, match=message):
        resolve_device(name)


def test_auto_device():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
