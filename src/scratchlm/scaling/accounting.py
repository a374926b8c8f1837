"""What a configuration costs: training FLOPs (exact and 6ND), parameters, and a memory estimate."""

from __future__ import annotations

from scratchlm.model.config import ModelConfig


def training_flops(cfg: ModelConfig, tokens: float, seq_len: int | None = None) -> float:
    """Exact matmul FLOPs of training on `tokens` tokens (forward + backward, causal attention included)."""
    return cfg.flops_per_token(seq_len) * tokens


def approx_training_flops(cfg: ModelConfig, tokens: float) -> float:
    """Kaplan/Chinchilla's 6 N D, with N the non-embedding parameters (the LM head counts: it multiplies)."""
    return 6 * cfg.n_params(embeddings=False) * tokens


def tokens_for_budget(cfg: ModelConfig, budget: float, seq_len: int | None = None) -> float:
    """Tokens that `budget` FLOPs of training buy for this shape (exact count)."""
    return budget / cfg.flops_per_token(seq_len)


def memory_estimate(cfg: ModelConfig, batch_size: int, seq_len: int | None = None, optimizer: str = "adamw",
                    compute_bytes: int = 2) -> dict[str, float]:
    """Bytes of one training step with float32 master weights and `compute_bytes` activations (2 = bf16).

    weights, gradients: 4 bytes per parameter each; AdamW: two float32 moments (8 bytes), Muon: one momentum
    buffer for hidden matrices (4 bytes) and AdamW's two for the rest. Activations: what backward keeps per
    token and layer with a fused (flash) attention kernel — the float32 residual input of each norm, the
    normalised inputs of the projections, q/k/v after RoPE, the attention output and per-head log-sum-exp,
    the SwiGLU gate/up outputs and their product — plus the logits and their float32 softmax in the loss.
    An estimate (allocator slack and temporary buffers come on top), not a measurement.
    """
    seq = seq_len or cfg.context_length
    n = cfg.n_params()
    tokens = batch_size * seq
    kv_dim = cfg.kv_heads * cfg.head_dim
    hidden = cfg.n_layers * cfg.layer_matmul_params()  # the matrices Muon updates
    optimizer_bytes = {"adamw": 8 * n, "muon": 4 * hidden + 8 * (n - hidden)}.get(optimizer)
    if optimizer_bytes is None:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose adamw or muon")
    b = compute_bytes
    per_token_layer = (
        2 * 4 * cfg.d_model  # float32 residual stream at the two norms
        + 2 * b * cfg.d_model  # normalised inputs of qkv_proj and gate_up_proj
        + b * (cfg.d_model + 2 * kv_dim)  # q, k (after RoPE) and v
        + b * cfg.d_model + 4 * cfg.n_heads  # attention output (o_proj input) and log-sum-exp
        + b * 3 * cfg.ffn_dim  # gate and up outputs, silu(gate) * up
    )
    activations = tokens * (cfg.n_layers * per_token_layer + cfg.vocab_size * (b + 4) + 4 * cfg.d_model)
    parts = {"weights": 4 * n, "gradients": 4 * n, "optimizer": optimizer_bytes, "activations": activations}
    return {**parts, "total": sum(parts.values())}
