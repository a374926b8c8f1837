"""The Transformer language model, written on tensors (our Linear, Embedding, RMSNorm, RoPE, attention).

    from scratchlm.model import ModelConfig, TransformerLM
    model = TransformerLM(ModelConfig(vocab_size=10_000, d_model=512, n_layers=4, n_heads=16))
    logits = model(token_ids)  # (batch, seq) -> (batch, seq, vocab)
"""

from scratchlm.model.attention import (
    ATTENTION_BACKENDS,
    CausalSelfAttention,
    causal_mask,
    get_attention,
    naive_attention,
    scaled_dot_product_attention,
    sdpa_attention,
)
from scratchlm.model.config import ModelConfig
from scratchlm.model.layers import Embedding, Linear, RMSNorm, SwiGLU, silu, softmax
from scratchlm.model.rope import RotaryEmbedding
from scratchlm.model.transformer import Block, TransformerLM

__all__ = [
    "ATTENTION_BACKENDS", "Block", "CausalSelfAttention", "Embedding", "Linear", "ModelConfig", "RMSNorm",
    "RotaryEmbedding", "SwiGLU", "TransformerLM", "causal_mask", "get_attention", "naive_attention",
    "scaled_dot_product_attention", "sdpa_attention", "silu", "softmax",
]
