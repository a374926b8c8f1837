"""From-scratch float64 references for the model tests: plain functions over tensors and a state_dict.

Written from the formulas, not from the library: a Python loop for masks, complex numbers for RoPE,
repeated k/v heads for grouped-query attention, separate gate/up matrices for SwiGLU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from scratchlm.model import ModelConfig

# Everything in float64, nothing cast down: the two sides agree to rounding.
EXACT64 = dict(rtol=1e-12, atol=1e-12)
# float32 in and out against a float64 reference.
FLOAT32 = dict(rtol=1e-4, atol=1e-5)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def silu(x: Tensor) -> Tensor:
    return x / (1 + torch.exp(-x))


def swiglu(x: Tensor, w_gate_up: Tensor, w_down: Tensor) -> Tensor:
    d_ff = w_down.shape[1]
    w_gate, w_up = w_gate_up[:d_ff], w_gate_up[d_ff: 2 * d_ff]
    return (silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


def rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """x: (..., heads, seq, hd), positions: (seq,) or (batch, seq). Pair (i, i + hd/2) is the complex number
    x_i + 1j x_{i+hd/2}, multiplied by exp(1j * pos * theta^(-2i/hd))."""
    hd = x.shape[-1]
    half = hd // 2
    freqs = theta ** (-2 * torch.arange(half, dtype=torch.float64) / hd)
    angles = (positions.to(torch.float64)[..., None] * freqs).unsqueeze(-3)  # broadcast over heads
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat((z.real, z.imag), dim=-1)


def allowed(q_len: int, kv_len: int, sliding_window: int | None) -> Tensor:
    """Which keys each query may see, one pair at a time. Queries are the last q_len of kv_len positions."""
    out = torch.zeros(q_len, kv_len, dtype=torch.bool)
    for i in range(q_len):
        pos = kv_len - q_len + i
        for j in range(kv_len):
            out[i, j] = j <= pos and (sliding_window is None or pos - j < sliding_window)
    return out


def attention(q: Tensor, k: Tensor, v: Tensor, sliding_window: int | None = None) -> Tensor:
    """q: (b, H, q_len, hd); k, v: (b, K, kv_len, hd); query head h uses kv head h // (H / K)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed(q.shape[2], k.shape[2], sliding_window).to(scores.device), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def transformer_lm(params: dict[str, Tensor], cfg: ModelConfig, token_ids: Tensor,
                   positions: Tensor | None = None) -> Tensor:
    """The whole forward pass over a state_dict-like mapping (names as in TransformerLM)."""
    b, t = token_ids.shape
    H, K, hd, eps = cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.norm_eps
    positions = torch.arange(t) if positions is None else positions
    x = F.embedding(token_ids, params["embed.weight"])
    for layer in range(cfg.n_layers):
        p = f"layers.{layer}."
        h = rms_norm(x, params[p + "attn_norm.weight"], eps)
        qkv = h @ params[p + "attn.qkv_proj.weight"].T
        q, k, v = qkv[..., : H * hd], qkv[..., H * hd: (H + K) * hd], qkv[..., (H + K) * hd:]
        q = q.reshape(b, t, H, hd).transpose(1, 2)
        k = k.reshape(b, t, K, hd).transpose(1, 2)
        v = v.reshape(b, t, K, hd).transpose(1, 2)
        if cfg.qk_norm:
            q = rms_norm(q, params[p + "attn.q_norm.weight"], eps)
            k = rms_norm(k, params[p + "attn.k_norm.weight"], eps)
        q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
        a = attention(q, k, v, cfg.sliding_window).transpose(1, 2).reshape(b, t, H * hd)
        x = x + a @ params[p + "attn.o_proj.weight"].T
        h = rms_norm(x, params[p + "ffn_norm.weight"], eps)
        x = x + swiglu(h, params[p + "ffn.gate_up_proj.weight"], params[p + "ffn.down_proj.weight"])
    x = rms_norm(x, params["norm.weight"], eps)
    head = params["embed.weight"] if cfg.tie_embeddings else params["lm_head.weight"]
    return x @ head.T


def assert_fwd_bwd(ours: Callable[[], Tensor], ref: Callable[[], Tensor], leaves: Sequence[Tensor],
                   **tol: float) -> None:
    """Same outputs, and the same gradients for every leaf under one random cotangent.

    `atol` is relative to the tensor's scale (its largest magnitude, at least 1): rounding errors of a sum grow
    with its terms, and a gradient of magnitude 100 carries errors 100x those of one of magnitude 1."""
    out, expected = ours(), ref()
    assert out.dtype == expected.dtype, (out.dtype, expected.dtype)
    assert_close_scaled(out, expected, "output", **tol)
    cotangent = torch.randn_like(expected)
    grads = torch.autograd.grad(out, leaves, cotangent, allow_unused=True)
    expected_grads = torch.autograd.grad(expected, leaves, cotangent, allow_unused=True)
    for i, (g, e) in enumerate(zip(grads, expected_grads)):
        assert (g is None) == (e is None), f"leaf {i}: gradient only on one side"
        if g is not None:
            assert_close_scaled(g, e, f"gradient of leaf {i} {tuple(e.shape)}", **tol)


def assert_close_scaled(actual: Tensor, expected: Tensor, what: str, rtol: float, atol: float) -> None:
    finite = expected[torch.isfinite(expected)]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")
