"""Batches from memory-mapped token files.

Training batches are random windows whose offsets are a pure function of (seed, rank, step, micro-step):
resuming at step s draws exactly the batches an uninterrupted run would have drawn, on any number of
ranks, with nothing to save but the step. Evaluation walks the file in order (non-overlapping windows).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from scratchlm.tokenizer.token_files import read_sidecar, read_tokens


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu. A device that does not exist here is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested but MPS is not available on this machine")
    return device


class TokenData:
    """A token file, memory-mapped, and the (inputs, targets) windows cut from it."""

    def __init__(self, path: str | os.PathLike, seq_len: int, tokenizer_sha256: str | None = None):
        self.path = Path(path)
        self.meta = read_sidecar(self.path)
        self.tokens = read_tokens(self.path, tokenizer_sha256)
        self.seq_len = seq_len
        if len(self.tokens) < seq_len + 1:
            raise ValueError(f"{self.path} holds {len(self.tokens):,} tokens, fewer than one window of seq_len + 1 = {seq_len + 1}")

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def bytes_per_token(self) -> float:
        """UTF-8 bytes of text per token over the whole file (turns nats/token into bits/byte)."""
        return self.meta["text_bytes"] / max(self.meta["count"], 1)

    def offsets(self, batch_size: int, seed: int, step: int, micro_step: int = 0, rank: int = 0) -> np.ndarray:
        """Window starts, uniform over every position a full window (seq_len + 1 tokens) can start at."""
        rng = np.random.default_rng([seed, rank, step, micro_step])
        return rng.integers(0, len(self.tokens) - self.seq_len, size=batch_size)

    def windows(self, offsets: np.ndarray) -> np.ndarray:
        """(len(offsets), seq_len + 1) int64 token windows starting at `offsets`."""
        return np.stack([self.tokens[o : o + self.seq_len + 1] for o in offsets]).astype(np.int64)

    def batch(self, batch_size: int, device: torch.device, *, seed: int, step: int, micro_step: int = 0,
              rank: int = 0) -> tuple[Tensor, Tensor]:
        """Random training batch: x (batch, seq_len) and y = x shifted by one, on `device`."""
        return to_device(self.windows(self.offsets(batch_size, seed, step, micro_step, rank)), device)

    def eval_batches(self, batch_size: int, device: torch.device, max_batches: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Consecutive non-overlapping windows from the start of the file, in order; deterministic."""
        n_windows = (len(self.tokens) - 1) // self.seq_len
        n_batches = -(-n_windows // batch_size)
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
        for b in range(n_batches):
            starts = np.arange(b * batch_size, min((b + 1) * batch_size, n_windows)) * self.seq_len
            yield to_device(self.windows(starts), device)


def to_device(windows: np.ndarray, device: torch.device) -> tuple[Tensor, Tensor]:
    t = torch.from_numpy(windows)
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)  # the copy overlaps the previous step's kernels
    else:
        t = t.to(device)
    return t[:, :-1], t[:, 1:]
