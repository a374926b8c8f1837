"""Rotary position embedding (RoPE) with precomputed cos/sin tables.

Pairs are (i, i + head_dim/2) ("rotate half", as in GPT-NeoX and Llama on Hugging Face) rather than
adjacent (2i, 2i+1): the same rotation up to a fixed permutation of the head dimensions, and it lets our
weights load into `LlamaForCausalLM` unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from scratchlm.model.layers import compute_dtype


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_seq_len: int, theta: float = 10_000.0, device: torch.device | str | None = None):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
        self.head_dim, self.max_seq_len, self.theta = head_dim, max_seq_len, theta
        cos, sin = self._tables(device)
        # not persistent: derived from the config, so checkpoints stay small and old ones stay loadable
        self.register_buffer("cos", cos, persistent=False)  # (max_seq_len, head_dim/2) float64
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, device: torch.device | str | None) -> tuple[Tensor, Tensor]:
        inv_freq = self.theta ** -(torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float64) / self.head_dim)
        angles = torch.outer(torch.arange(self.max_seq_len, device=device, dtype=torch.float64), inv_freq)
        return angles.cos(), angles.sin()

    def init_weights(self) -> None:
        """Recompute the tables (after the module was created on the meta device and materialised)."""
        self.cos, self.sin = self._tables(self.cos.device)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - nn.Module's signature
        """`.to(dtype)` / `.half()` must not round the tables: moved with the module, kept float64."""
        super()._apply(fn, recurse)
        self.init_weights()
        return self

    def tables(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and sin at `positions` ((seq,) or (batch, seq) integer positions < max_seq_len), each
        (1 or batch, 1, seq, head_dim/2) in `dtype`: computed once per forward pass and shared by the layers."""
        return self.cos[positions].to(dtype).unsqueeze(-3), self.sin[positions].to(dtype).unsqueeze(-3)

    @staticmethod
    def rotate(x: Tensor, tables: tuple[Tensor, Tensor]) -> Tensor:
        """x: (..., n_heads, seq, head_dim) rotated by `tables` (see `tables`), computed in their dtype."""
        cos, sin = tables
        x1, x2 = x.to(cos.dtype).chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: (..., n_heads, seq, head_dim); positions: (seq,) or (batch, seq) integer positions < max_seq_len."""
        return self.rotate(x, self.tables(positions, compute_dtype(x.dtype)))

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_seq_len={self.max_seq_len}, theta={self.theta}"
