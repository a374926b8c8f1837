"""FlashAttention-2 in plain PyTorch: the Triton kernels' algorithm, tile by tile, readable and CPU-runnable.

Same inputs and masking as scratchlm.kernels.flash_attention (q: (B, H, T, D), k, v: (B, KV, S, D), causal with
the queries at the last T of S positions), same structure: an online softmax over key blocks that saves only O
and the logsumexp, and a backward that recomputes each probability tile. The Python loops run over tiles; each
tile is a batched matmul over (batch, kv head, group). Arithmetic in float32 (float64 for float64 inputs), so
with float64 inputs this matches a float64 softmax to rounding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scratchlm.model.layers import compute_dtype


def _grouped(q: Tensor, n_kv: int) -> Tensor:
    """(B, H, T, D) -> (B, KV, G, T, D): the G query heads that share each kv head side by side."""
    b, h, t, d = q.shape
    return q.reshape(b, n_kv, h // n_kv, t, d)


def _visible(q_rows: range, keys: range, t: int, s: int, causal: bool, device: torch.device) -> Tensor | None:
    """(rows, keys) bool mask of one tile, or None when every pair is visible."""
    if not causal or keys.stop - 1 <= s - t + q_rows.start:  # even the first query sees the tile's last key
        return None
    q_pos = torch.arange(q_rows.start, q_rows.stop, device=device)[:, None] + (s - t)
    return torch.arange(keys.start, keys.stop, device=device)[None, :] <= q_pos


def _key_end(q_rows: range, t: int, s: int, causal: bool) -> int:
    """Keys at or after this index are masked for every query of the block: their tiles are skipped."""
    return min(s, s - t + q_rows.stop) if causal else s


def flash_forward(q: Tensor, k: Tensor, v: Tensor, causal: bool, block_m: int = 64,
                  block_n: int = 64) -> tuple[Tensor, Tensor]:
    """(O like q, logsumexp (B, H, T) in the compute dtype)."""
    b, h, t, d = q.shape
    n_kv, s = k.shape[1], k.shape[2]
    wide = compute_dtype(q.dtype)
    scale = 1.0 / math.sqrt(d)
    qg, kw, vw = _grouped(q, n_kv).to(wide), k.to(wide).unsqueeze(2), v.to(wide).unsqueeze(2)  # (B, KV, 1, S, D)
    out = torch.empty_like(qg)
    lse = torch.empty(qg.shape[:-1], dtype=wide, device=q.device)  # (B, KV, G, T)
    for m0 in range(0, t, block_m):
        rows = range(m0, min(m0 + block_m, t))
        q_tile = qg[..., m0:rows.stop, :]  # (B, KV, G, BM, D)
        row_max = torch.full(q_tile.shape[:-1], -math.inf, dtype=wide, device=q.device)
        row_sum = torch.zeros_like(row_max)
        acc = torch.zeros_like(q_tile)
        for n0 in range(0, _key_end(rows, t, s, causal), block_n):
            keys = range(n0, min(n0 + block_n, s))
            scores = q_tile @ kw[..., n0:keys.stop, :].transpose(-1, -2) * scale  # (B, KV, G, BM, BN)
            visible = _visible(rows, keys, t, s, causal, q.device)
            if visible is not None:
                scores = scores.masked_fill(~visible, -math.inf)
            new_max = torch.maximum(row_max, scores.amax(-1))  # finite: each row sees key 0 in its first tile
            p = torch.exp(scores - new_max[..., None])
            correction = torch.exp(row_max - new_max)  # rescale what was accumulated against the old max
            row_sum = row_sum * correction + p.sum(-1)
            acc = acc * correction[..., None] + p @ vw[..., n0:keys.stop, :]
            row_max = new_max
        out[..., m0:rows.stop, :] = acc / row_sum[..., None]
        lse[..., m0:rows.stop] = row_max + torch.log(row_sum)
    return out.reshape(b, h, t, d).to(q.dtype), lse.reshape(b, h, t)


def flash_backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, causal: bool,
                   block_m: int = 64, block_n: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv): recompute P tile by tile from the logsumexp; dS = P * (dP - delta)."""
    b, h, t, d = q.shape
    n_kv, s = k.shape[1], k.shape[2]
    wide = lse.dtype
    scale = 1.0 / math.sqrt(d)
    qg, dog = _grouped(q, n_kv).to(wide), _grouped(do, n_kv).to(wide)  # (B, KV, G, T, D)
    kw, vw = k.to(wide).unsqueeze(2), v.to(wide).unsqueeze(2)  # (B, KV, 1, S, D)
    lse_g = _grouped(lse.unsqueeze(-1), n_kv).squeeze(-1)  # (B, KV, G, T)
    delta = (dog * _grouped(o, n_kv).to(wide)).sum(-1)  # 0) rowsum(dO * O): (B, KV, G, T)
    dq, dk, dv = torch.zeros_like(qg), torch.zeros_like(kw), torch.zeros_like(vw)
    for m0 in range(0, t, block_m):
        rows = range(m0, min(m0 + block_m, t))
        q_tile, do_tile = qg[..., m0:rows.stop, :], dog[..., m0:rows.stop, :]
        for n0 in range(0, _key_end(rows, t, s, causal), block_n):
            keys = range(n0, min(n0 + block_n, s))
            k_tile, v_tile = kw[..., n0:keys.stop, :], vw[..., n0:keys.stop, :]
            p = torch.exp(q_tile @ k_tile.transpose(-1, -2) * scale - lse_g[..., m0:rows.stop, None])
            visible = _visible(rows, keys, t, s, causal, q.device)
            if visible is not None:
                p = p.masked_fill(~visible, 0.0)
            dp = do_tile @ v_tile.transpose(-1, -2)  # (B, KV, G, BM, BN)
            ds = p * (dp - delta[..., m0:rows.stop, None])
            # 1) dK, dV: the group's query heads add up into their shared kv head; 2) dQ
            dv[..., n0:keys.stop, :] += (p.transpose(-1, -2) @ do_tile).sum(2, keepdim=True)
            dk[..., n0:keys.stop, :] += (ds.transpose(-1, -2) @ q_tile).sum(2, keepdim=True) * scale
            dq[..., m0:rows.stop, :] += ds @ k_tile * scale
    return (dq.reshape(b, h, t, d).to(q.dtype), dk.squeeze(2).to(k.dtype), dv.squeeze(2).to(v.dtype))


class FlashAttentionReference(torch.autograd.Function):
    """The tiled algorithm with autograd, saving O and the logsumexp like the kernels."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, causal: bool, block_m: int, block_n: int) -> Tensor:
        o, lse = flash_forward(q, k, v, causal, block_m, block_n)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.blocks = causal, (block_m, block_n)
        return o

    @staticmethod
    def backward(ctx, do: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_backward(do, q, k, v, o, lse, ctx.causal, *ctx.blocks)
        return dq, dk, dv, None, None, None


def flash_attention_reference(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, block_m: int = 64,
                              block_n: int = 64) -> Tensor:
    """FlashAttention-2 in PyTorch. q: (B, H, T, D), k, v: (B, KV, S, D), any head dim, any device."""
    b, h, t, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d or h % k.shape[1]:
        raise ValueError(f"need q (B, H, T, D), k and v (B, KV, S, D) with H a multiple of KV; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if causal and k.shape[2] < t:
        raise ValueError(f"causal attention puts the {t} queries at the last of {k.shape[2]} positions: need S >= T")
    return FlashAttentionReference.apply(q, k, v, causal, block_m, block_n)
