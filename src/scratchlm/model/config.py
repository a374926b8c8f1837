"""`ModelConfig`: the shape of a Transformer LM, validated, with exact parameter and FLOP counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scratchlm.config import ConfigError

AttentionBackend = Literal["auto", "naive", "sdpa", "flash"]
NormBackend = Literal["auto", "torch", "triton"]


def default_d_ff(d_model: int, multiple_of: int = 64) -> int:
    """SwiGLU hidden size: 8/3 * d_model (same parameters as a 4x GELU MLP), rounded up to `multiple_of`."""
    return -(-(8 * d_model // 3) // multiple_of) * multiple_of


@dataclass(kw_only=True)
class ModelConfig:
    vocab_size: int = field(default=10_000, metadata={"help": "token vocabulary size (the tokenizer's)"})
    context_length: int = field(default=256, metadata={"help": "longest sequence the model sees (RoPE table size)"})
    d_model: int = field(default=512, metadata={"help": "residual stream width"})
    n_layers: int = field(default=4, metadata={"help": "Transformer blocks"})
    n_heads: int = field(default=16, metadata={"help": "query heads"})
    n_kv_heads: int | None = field(default=None, metadata={"help": "key/value heads for grouped-query attention (default: n_heads)"})
    d_ff: int | None = field(default=None, metadata={"help": "SwiGLU hidden size (default: 8/3 d_model rounded up to 64)"})
    rope_theta: float = field(default=10_000.0, metadata={"help": "RoPE base"})
    norm_eps: float = field(default=1e-5, metadata={"help": "RMSNorm epsilon"})
    qk_norm: bool = field(default=False, metadata={"help": "RMSNorm on queries and keys per head before RoPE"})
    tie_embeddings: bool = field(default=False, metadata={"help": "share the token embedding with the LM head"})
    sliding_window: int | None = field(default=None, metadata={"help": "attend only to the last N positions (default: all)"})
    attention: AttentionBackend = field(default="auto", metadata={"help": "attention implementation: naive (ours), sdpa (PyTorch's), flash (Triton), auto (best available)"})
    norm_backend: NormBackend = field(default="auto", metadata={"help": "RMSNorm implementation: torch (eager PyTorch), triton (our kernel), auto (triton on CUDA when importable, else torch)"})

    # Unset fields stay None (so a preset that changes n_heads or d_model also changes what they resolve to);
    # code reads the resolved values kv_heads and ffn_dim.

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"model.{name} must be positive, got {value}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"model.n_heads ({self.n_heads}) must be a multiple of model.n_kv_heads ({self.kv_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head dimension d_model/n_heads = {self.head_dim} must be even for RoPE")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ConfigError("model.rope_theta and model.norm_eps must be positive")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ConfigError(f"model.sliding_window must be positive or unset, got {self.sliding_window}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def ffn_dim(self) -> int:
        return self.d_ff if self.d_ff is not None else default_d_ff(self.d_model)

    # -- counts ---------------------------------------------------------------------------------------

    def layer_matmul_params(self) -> int:
        """Weights of one block that take part in matrix products (q, k, v, o, gate, up, down)."""
        hd = self.head_dim
        attn = self.d_model * hd * (2 * self.n_heads + 2 * self.kv_heads)
        return attn + 3 * self.d_model * self.ffn_dim

    def n_params(self, embeddings: bool = True) -> int:
        """Trainable parameters. `embeddings=False` leaves out the token embedding table (a lookup, no FLOPs);
        the LM head counts unless it is tied to that table."""
        norms = 2 * self.d_model + (2 * self.head_dim if self.qk_norm else 0)
        total = self.n_layers * (self.layer_matmul_params() + norms) + self.d_model  # + final norm
        head = 0 if self.tie_embeddings else self.vocab_size * self.d_model
        table = self.vocab_size * self.d_model
        return total + head + (table if embeddings or self.tie_embeddings else 0)

    def attended_keys(self, seq_len: int | None = None) -> float:
        """Mean number of keys each query attends to in a causal sequence of `seq_len` (sliding window aware)."""
        t = seq_len or self.context_length
        w = self.sliding_window or t
        # query i (0-based) sees min(i + 1, w) keys
        full = min(w, t)
        total = full * (full + 1) // 2 + (t - full) * w
        return total / t

    def forward_flops_per_token(self, seq_len: int | None = None) -> float:
        """Exact matrix-product FLOPs of one token's forward pass: 2 per multiply-add in every projection, the
        LM head, and the causal attention products (QK^T and AV over the keys actually attended)."""
        matmuls = 2 * (self.n_layers * self.layer_matmul_params() + self.vocab_size * self.d_model)
        attention = self.n_layers * 2 * 2 * self.n_heads * self.head_dim * self.attended_keys(seq_len)
        return matmuls + attention

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward = 3x forward)."""
        return 3 * self.forward_flops_per_token(seq_len)
