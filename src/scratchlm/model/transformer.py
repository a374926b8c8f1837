"""Pre-norm Transformer block and the `TransformerLM`: embeddings -> blocks -> final norm -> LM head."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from scratchlm.model.attention import CausalSelfAttention, LayerCache, position_mask
from scratchlm.model.config import ModelConfig
from scratchlm.model.layers import Embedding, Linear, RMSNorm, SwiGLU, compute_dtype, fuses_residual_adds, linear
from scratchlm.model.rope import RotaryEmbedding


class KVCacheLike(Protocol):
    kv_len: int  # key slots every layer's `update` hands back (what the position mask spans)

    def layer(self, index: int) -> LayerCache: ...


class Block(nn.Module):
    """x + attn(norm(x)), then + ffn(norm(x))."""

    def __init__(self, config: ModelConfig, rope: RotaryEmbedding, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps, device=device, dtype=dtype, backend=config.norm_backend)
        self.attn = CausalSelfAttention(config, rope, device=device, dtype=dtype)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps, device=device, dtype=dtype, backend=config.norm_backend)
        self.ffn = SwiGLU(config.d_model, config.ffn_dim, device=device, dtype=dtype)

    def forward(self, x: Tensor, positions: Tensor, cache: LayerCache | None = None,
                rope_tables: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None,
                added: bool = False, pending: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        # (batch, seq, d_model) -> same. Norms and residual adds go into the modules so that one-row decoding
        # can fuse them with the projections (scratchlm.kernels.gemv).
        if not added:
            x = self.attn(x, positions, cache, norm=self.attn_norm, residual=x, rope_tables=rope_tables, mask=mask)
            return self.ffn(x, norm=self.ffn_norm, residual=x)
        # added (several inference rows, `layers.fuses_residual_adds`): each residual add happens in the kernel
        # of the norm after it (`RMSNorm.add`); `pending` is the previous block's output, not yet added to the
        # residual stream x, and this block returns (x, its own pending output). Each norm used here is this
        # block's own, so a wrapper that gathers a block's parameters around its forward (FSDP) still works.
        normed, x = (self.attn_norm(x), x) if pending is None else self.attn_norm.add(pending, x)
        normed, x = self.ffn_norm.add(self.attn(normed, positions, cache, rope_tables=rope_tables, mask=mask), x)
        return x, self.ffn(normed)


class TransformerLM(nn.Module):
    """A decoder-only language model. Single-device by design: parallelism wraps it from outside."""

    def __init__(self, config: ModelConfig, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.config = config
        # Tied: the table is also the output layer, so it gets the output layer's scale (logits ~ N(0, 1)).
        embed_std = config.d_model ** -0.5 if config.tie_embeddings else 1.0
        self.embed = Embedding(config.vocab_size, config.d_model, std=embed_std, device=device, dtype=dtype)
        self.rope = RotaryEmbedding(config.head_dim, config.context_length, config.rope_theta, device=device)
        self.layers = nn.ModuleList(Block(config, self.rope, device=device, dtype=dtype) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps, device=device, dtype=dtype, backend=config.norm_backend)
        self.lm_head = None if config.tie_embeddings else Linear(config.d_model, config.vocab_size, device=device, dtype=dtype)

    def init_weights(self) -> None:
        """(Re)initialise every parameter and buffer, e.g. after building on the meta device and `to_empty`."""
        for module in self.modules():
            if module is not self and hasattr(module, "init_weights"):
                module.init_weights()

    def forward(self, token_ids: Tensor, token_positions: Tensor | None = None, kv_cache: KVCacheLike | None = None,
                logits: bool = True) -> Tensor:
        """token_ids: (batch, seq) long; token_positions: (seq,) or (batch, seq), default 0..seq-1.
        Returns logits (batch, seq, vocab_size) in the compute dtype; with logits=False the final normalised
        hidden states (batch, seq, d_model) instead (prefilling a KV cache needs no logits: a keyword, not a
        method, so that wrappers such as FSDP pass it through). With `kv_cache` (scratchlm.inference),
        positions are required: each row's tokens are stored at, and attend up to, their positions."""
        seq = token_ids.shape[-1]
        if seq > self.config.context_length:  # explicit positions must also be < context_length (not checked:
            # reading them would wait for the GPU)
            raise ValueError(f"sequence of {seq} tokens exceeds context_length {self.config.context_length}")
        if token_positions is None:
            if kv_cache is not None:
                raise ValueError("a forward pass with a KV cache needs token_positions")
            token_positions = torch.arange(seq, device=token_ids.device)
        x = self.embed(token_ids)
        # What every layer needs of the positions, once per pass (not once per layer: fewer kernels and launches);
        # no RoPE tables where the layers' decode kernel rotates by itself (the same for every layer)
        projected = kv_cache is not None and self.layers[0].attn.projects_into_cache(x, token_positions, kv_cache.layer(0))
        rope_tables = None if projected else self.rope.tables(token_positions, compute_dtype(x.dtype))
        mask = None if kv_cache is None else position_mask(token_positions, kv_cache.kv_len, self.config.sliding_window)
        if fuses_residual_adds(x, self.norm):  # several inference rows: each add inside the next norm's kernel
            pending = None
            for i, layer in enumerate(self.layers):
                x, pending = layer(x, token_positions, None if kv_cache is None else kv_cache.layer(i), rope_tables,
                                   mask, added=True, pending=pending)
            normed = self.norm(x) if pending is None else self.norm.add(pending, x)[0]
            return self.output(normed) if logits else normed
        for i, layer in enumerate(self.layers):
            x = layer(x, token_positions, None if kv_cache is None else kv_cache.layer(i), rope_tables, mask)
        return self.output(x, norm=self.norm) if logits else self.norm(x)

    def output(self, h: Tensor, norm: RMSNorm | None = None) -> Tensor:
        """(..., d_model) -> logits (..., vocab_size): the LM head of h, or of norm(h)."""
        return linear(h, self.embed.weight, norm) if self.lm_head is None else self.lm_head(h, norm=norm)

    def num_params(self, embeddings: bool = True) -> int:
        """Counted from the module (tied weights once); equals `config.n_params(embeddings)`."""
        params = {id(p): p for p in self.parameters()}
        total = sum(p.numel() for p in params.values())
        if not embeddings and self.lm_head is not None:
            total -= self.embed.weight.numel()
        return total
