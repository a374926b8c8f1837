"""Token files and small training configs shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scratchlm.model import ModelConfig
from scratchlm.optim import OptimizerConfig, ScheduleConfig
from scratchlm.tokenizer.token_files import write_token_file
from scratchlm.train import DataConfig, TrainConfig

VOCAB = 64


def markov_tokens(n: int, seed: int, vocab: int = VOCAB, successors: int = 3) -> np.ndarray:
    """A first-order Markov chain where each token has `successors` likely next tokens: learnable structure
    (entropy about log(successors)) that a tiny model picks up within tens of steps."""
    rng = np.random.default_rng(1234)  # the chain itself is fixed; `seed` only varies the walk
    table = rng.integers(0, vocab, size=(vocab, successors))
    walk = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.int64)
    out[0] = 0
    choices = walk.integers(0, successors, size=n)
    for i in range(1, n):
        out[i] = table[out[i - 1], choices[i]]
    return out


def write_markov_file(path: Path, n: int, seed: int) -> Path:
    write_token_file(path, markov_tokens(n, seed), vocab_size=VOCAB, tokenizer_sha256="markov", text_bytes=4 * n)
    return path


@pytest.fixture(scope="session")
def token_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tokens")
    return write_markov_file(folder / "train.bin", 50_000, seed=0), write_markov_file(folder / "val.bin", 5_000, seed=1)


def tiny_config(out: Path, token_files: tuple[Path, Path], **overrides) -> TrainConfig:
    train, val = token_files
    cfg = TrainConfig(
        model=ModelConfig(vocab_size=VOCAB, context_length=32, d_model=32, n_layers=2, n_heads=2),
        optimizer=OptimizerConfig(lr=1e-2), schedule=ScheduleConfig(warmup_steps=5),
        data=DataConfig(train=str(train), val=str(val)), out=str(out), steps=30, batch_size=8,
        device="cpu", log_interval=1, eval_interval=10, eval_batches=4, checkpoint_interval=10, sample_tokens=0,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg
