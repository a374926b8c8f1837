"""FlashAttention-2 in Triton, forward and backward, registered as the model's "flash" attention backend.

softmax(q k^T / sqrt(d)) v for q: (B, H, T, D) and k, v: (B, KV, S, D), H a multiple of KV (grouped-query
attention: query head h reads kv head h // (H / KV), k and v are never repeated). Causal masking follows
scratchlm.model.attention: the T queries are the LAST T of the S positions, query i sees keys j <= S - T + i.

Forward (one program per block of BLOCK_M queries of one head): stream the key/value blocks through an online
softmax (running row max m, running sum l, unnormalised output acc, all float32), in base 2: the scale
log2(e)/sqrt(d) is folded into the scores so every exponential is one exp2. Under the causal mask the key blocks
split in three: left of the diagonal (every pair visible, no mask arithmetic), on it (masked), right of it
(skipped, never loaded). Saved for backward: O and the per-row logsumexp only, not the T x S probabilities.
Programs are ordered longest first (the last query blocks, which see the most keys under the causal mask, of
every head, then the next): the GPU then finishes on short programs instead of idling behind a long one.

Backward recomputes the probabilities tile by tile from q, k and the logsumexp:
  1) dQ: one program per query block, looping over the key blocks like the forward (and ordered like it);
     it first computes delta_i = sum_d dO_id O_id for its rows and stores it for the next pass
  2) dK, dV: one program per key block of one kv head, looping over every query head of its group and their
     query blocks, so all contributions to a dK/dV row add up in registers (no atomics)
with dS = P * (dP - delta), dP = dO V^T, dV = P^T dO, dK = scale dS^T Q, dQ = scale dS K.

Fully masked tiles are never touched; masked-out and out-of-range entries are filtered with `tl.where`, never
with NaN-producing arithmetic. Head dims 64 and 128; float16/bfloat16 (float32 works too, for tests: its dots
run as 3xTF32, float32-accurate, not plain TF32).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from scratchlm import kernels
from scratchlm.kernels.decode_attention import decode_attention
from scratchlm.model.attention import ATTENTION_BACKENDS, naive_attention, sdpa_attention

log = logging.getLogger(__name__)

# Read by @triton.jit as it decorates the kernels below: True means they run in the CPU interpreter.
INTERPRETED = bool(triton.knobs.runtime.interpret)

HEAD_DIMS = (64, 128)
LOG2E = 1.4426950408889634  # log2(e); the kernels spell it (and ln 2) as literals: jit code reads no Python globals


Tile = tuple[int, int, int, int]  # (BLOCK_M, BLOCK_N, num_warps, num_stages)

# Tuning every new (T, S, head dim, causal) compiles and times all candidates: seconds per shape. With
# SCRATCHLM_AUTOTUNE=0 (the GPU tests) each kernel takes candidate PIN of its list instead, untimed; the tests
# set PIN to every index in turn, so each candidate is checked for correctness, not only the ones tuning picks.
PIN: int | None = 0 if os.environ.get("SCRATCHLM_AUTOTUNE") == "0" else None


def candidates(by_head_dim: dict[int, list[Tile]], float32: Tile, head_dim: int, dtype: torch.dtype) -> list[Tile]:
    """The tiles to tune over for one launch: float32's one tile, else the head dim's list (or its PIN-th)."""
    if dtype == torch.float32:
        return [float32]
    tiles = by_head_dim[head_dim]
    return tiles if PIN is None else [tiles[PIN % len(tiles)]]


def _autotune(by_head_dim: dict[int, list[Tile]], float32: Tile, interpreted: tuple[int, int], key: list[str]):
    """@triton.autotune over the Hopper candidates for the launch's head dim; float32 inputs (tests only) get one
    small tile, since their 3xTF32 dots need about three times the registers and would make tuning compile
    many spilling kernels. The interpreter gets one small config: tuning there would only multiply CPU time,
    and tiles smaller than the test sequences exercise every loop and mask."""
    if INTERPRETED:
        return triton.autotune([triton.Config({"BLOCK_M": interpreted[0], "BLOCK_N": interpreted[1]})], key=key)
    tiles = sorted({tile for tiles in by_head_dim.values() for tile in tiles} | {float32})
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in tiles]

    def for_head_dim(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        wanted = candidates(by_head_dim, float32, kwargs["HEAD_DIM"], named_args["Q"].dtype)
        return [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in wanted]

    return triton.autotune(configs, key=key, prune_configs_by={"early_config_prune": for_head_dim}, cache_results=True)


# Hopper candidates, each compiled for sm_90a without register spills (ptxas -v, bfloat16, MHA). Forward: 128
# queries a program keep the tensor cores busy (wgmma works on 64-row slabs per warpgroup); 64 or 128 keys a
# step trade register pressure (the BLOCK_M x BLOCK_N score tile lives in registers) against loop overhead;
# 2-4 stages let the loads of the next k/v tiles run ahead of the current dots.
FWD_TILES = {64: [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 4)],
             128: [(128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 8, 4), (64, 64, 4, 4)]}
# dK/dV holds four BLOCK_N x D tiles (k, v and their float32 gradients) for the whole program, so it streams the
# queries in narrow blocks; dQ is the mirror image (wide query block, narrow key steps).
BWD_KV_TILES = {64: [(64, 128, 8, 2), (64, 128, 8, 3), (32, 128, 8, 3), (64, 64, 8, 3), (32, 64, 4, 4)],
                128: [(32, 128, 8, 3), (64, 64, 8, 3), (32, 64, 8, 4), (32, 64, 4, 3), (32, 64, 4, 4)]}
BWD_Q_TILES = {64: [(128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3), (128, 64, 8, 2), (128, 128, 8, 2)],
               128: [(128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 4), (128, 64, 8, 2), (64, 32, 4, 4)]}
TUNE_KEY = ["T", "S", "HEAD_DIM", "CAUSAL"]  # Triton adds the tensor dtypes to the key itself


# -- forward ----------------------------------------------------------------------------------------


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, q_pos, kT_ptrs, v_ptrs, stride_ks, stride_vs, lo, hi, S, qk_scale,
               BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """Online softmax over the key blocks [lo, hi). MASKED: filter keys past S and, if CAUSAL, keys after each
    query's position; unmasked calls only cover blocks where every pair is visible and in range."""
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        keys = start_n + offs_n  # (BN,)
        if MASKED:
            kT = tl.load(kT_ptrs + start_n * stride_ks, mask=(keys < S)[None, :], other=0.0)  # (D, BN)
            v = tl.load(v_ptrs + start_n * stride_vs, mask=(keys < S)[:, None], other=0.0)  # (BN, D)
        else:
            kT = tl.load(kT_ptrs + start_n * stride_ks)
            v = tl.load(v_ptrs + start_n * stride_vs)
        s = tl.dot(q, kT, input_precision=PRECISION)  # (BM, BN) unscaled scores
        if MASKED:
            visible = keys[None, :] < S
            if CAUSAL:
                visible = visible & (keys[None, :] <= q_pos[:, None])
            s = tl.where(visible, s, float("-inf"))
        # Every row sees at least one key in its first block (key 0 under the causal mask, an in-range key in
        # the tail block otherwise), so m_new is finite and no -inf - -inf appears. The max is taken before
        # scaling (qk_scale > 0), so each score costs one FMA on its way into exp2.
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)  # log2 units
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)  # rescales what was summed against the old maximum
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _key_range(start_m, T, S, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """For the queries [start_m, start_m + BLOCK_M): keys [0, full) need no mask, [full, end) do, the rest are
    never visible. Causal: the first query of the block sits at position S - T + start_m and sees every key up
    to it; the last one sees keys up to S - T + start_m + BLOCK_M - 1."""
    if CAUSAL:
        full = ((S - T + start_m + 1) // BLOCK_N) * BLOCK_N
        end = S - T + start_m + BLOCK_M
        end = tl.where(end < S, end, S)
    else:
        full = (S // BLOCK_N) * BLOCK_N
        end = S
    return full, end


@triton.jit
def _query_program(T, H, GROUP, BLOCK_M: tl.constexpr):
    """(first query, batch * H + head, batch, head, kv head) of this program, which owns one block of BLOCK_M
    queries of one head; grid (B * H, query blocks), the last blocks (under the causal mask the longest) first."""
    start_m = (tl.cdiv(T, BLOCK_M) - 1 - tl.program_id(1)) * BLOCK_M
    bh = tl.program_id(0)
    b, h = bh // H, bh % H
    return start_m, bh, b, h, h // GROUP


@_autotune(FWD_TILES, float32=(64, 64, 4, 2), interpreted=(32, 16), key=TUNE_KEY)
@triton.jit
def _attn_fwd_kernel(
    Q, K, V, OUT, LSE,  # q, out: (B, H, T, D), k, v: (B, KV, S, D), last dim contiguous; lse: (B, H, T) float32
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_ot,
    H, GROUP, T, S, qk_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m, bh, b, h, kvh = _query_program(T, H, GROUP, BLOCK_M)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T

    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    k_base = K + b.to(tl.int64) * stride_kb + kvh.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + kvh.to(tl.int64) * stride_vh
    kT_ptrs = k_base + offs_d[:, None] + offs_n[None, :] * stride_ks  # (D, BN): k loaded transposed
    v_ptrs = v_base + offs_n[:, None] * stride_vs + offs_d[None, :]  # (BN, D)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    q_pos = S - T + offs_m  # positions of the queries among the keys
    full, end = _key_range(start_m, T, S, BLOCK_M, BLOCK_N, CAUSAL)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, q_pos, kT_ptrs, v_ptrs, stride_ks, stride_vs, 0, full, S,
                               qk_scale, BLOCK_N, False, CAUSAL, PRECISION)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, q_pos, kT_ptrs, v_ptrs, stride_ks, stride_vs, full, end, S,
                               qk_scale, BLOCK_N, True, CAUSAL, PRECISION)

    o = acc / l_i[:, None]
    o_base = OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_ot + offs_d[None, :], o.to(OUT.dtype.element_ty), mask=row_ok[:, None])
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # natural-log logsumexp of the scaled scores
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, lse, mask=row_ok)


# -- backward ---------------------------------------------------------------------------------------


@triton.jit
def _bwd_dkdv_tiles(dk, dv, k, v, qT_ptrs, do_ptrs, lse_ptr, delta_ptr, stride_qt, stride_dt, keys, lo, hi, T, S,
                    qk_scale, BLOCK_M: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr):
    """Add the query blocks [lo, hi) of one head to dk, dv (BN, D). Query rows past T load as zeros with
    lse = delta = 0, which makes their contributions exactly zero (dO = 0), so only the causal mask is applied
    (MASKED: blocks on the diagonal)."""
    offs_m0 = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        row_ok = offs_m < T
        qT = tl.load(qT_ptrs + start_m * stride_qt, mask=row_ok[None, :], other=0.0)  # (D, BM)
        do = tl.load(do_ptrs + start_m * stride_dt, mask=row_ok[:, None], other=0.0)  # (BM, D)
        lse2 = tl.load(lse_ptr + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634  # to log2 units
        delta = tl.load(delta_ptr + offs_m, mask=row_ok, other=0.0)
        # Both score-sized products first, the two accumulating ones last: the tensor cores then wait once for
        # the softmax work instead of twice, and dv / dk stay in flight into the next block (H100: -5% time).
        sT = tl.dot(k, qT, input_precision=PRECISION)  # (BN, BM) transposed scores
        dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (BN, BM)
        pT = tl.math.exp2(sT * qk_scale - lse2[None, :])
        if MASKED:
            pT = tl.where(keys[:, None] <= (S - T + offs_m)[None, :], pT, 0.0)
        dsT = pT * (dpT - delta[None, :])
        dv += tl.dot(pT.to(do.dtype), do, input_precision=PRECISION)
        dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT), input_precision=PRECISION)
    return dk, dv


@triton.jit
def _bwd_dkdv_head(dk, dv, k, v, Q, DO, LSE, DELTA, b, h, H, stride_qb, stride_qh, stride_qt, stride_db, stride_dh,
                   stride_dt, keys, lo, diag_end, T, S, qk_scale,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, PRECISION: tl.constexpr):
    """Add query head h's contributions to one key block's dk, dv: the diagonal blocks [lo, diag_end) masked,
    the blocks below them [diag_end, T) not."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    bh = (b * H + h).to(tl.int64)
    qT_ptrs = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + offs_d[:, None] + offs_m[None, :] * stride_qt
    do_ptrs = DO + b.to(tl.int64) * stride_db + h.to(tl.int64) * stride_dh + offs_m[:, None] * stride_dt + offs_d[None, :]
    dk, dv = _bwd_dkdv_tiles(dk, dv, k, v, qT_ptrs, do_ptrs, LSE + bh * T, DELTA + bh * T, stride_qt, stride_dt, keys,
                             lo, diag_end, T, S, qk_scale, BLOCK_M, True, PRECISION)
    dk, dv = _bwd_dkdv_tiles(dk, dv, k, v, qT_ptrs, do_ptrs, LSE + bh * T, DELTA + bh * T, stride_qt, stride_dt, keys,
                             diag_end, T, T, S, qk_scale, BLOCK_M, False, PRECISION)
    return dk, dv


@_autotune(BWD_KV_TILES, float32=(32, 64, 4, 2), interpreted=(16, 32), key=TUNE_KEY + ["SINGLE_HEAD"])
@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,  # dk, dv: like k, v; do: like q; lse, delta: (B, H, T) float32
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_db, stride_dh, stride_dt, stride_dkb, stride_dkh, stride_dks, stride_dvb, stride_dvh, stride_dvs,
    H, GROUP, T, S, sm_scale, qk_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr, SINGLE_HEAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_n = tl.program_id(0) * BLOCK_N
    bkv = tl.program_id(1)
    n_kv = H // GROUP
    b, kvh = bkv // n_kv, bkv % n_kv
    keys = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = keys < S

    k = tl.load(K + b.to(tl.int64) * stride_kb + kvh.to(tl.int64) * stride_kh + keys[:, None] * stride_ks
                + offs_d[None, :], mask=key_ok[:, None], other=0.0)  # (BN, D)
    v = tl.load(V + b.to(tl.int64) * stride_vb + kvh.to(tl.int64) * stride_vh + keys[:, None] * stride_vs
                + offs_d[None, :], mask=key_ok[:, None], other=0.0)
    dk = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)

    if CAUSAL:
        # Queries before row start_n - (S - T) sit left of every key here: skip their blocks. From `lo`, the
        # blocks that contain a query positioned before the block's last key straddle the diagonal (masked).
        first_row = start_n - (S - T)
        first_row = tl.where(first_row > 0, first_row, 0)
        lo = (first_row // BLOCK_M) * BLOCK_M
        straddle = start_n + BLOCK_N - 1 - (S - T) - lo  # rows after lo that still see a masked key
        straddle = tl.where(straddle > 0, straddle, 0)
        diag_end = lo + tl.cdiv(straddle, BLOCK_M) * BLOCK_M
        diag_end = tl.where(diag_end < T, diag_end, T)
    else:
        lo = 0
        diag_end = 0
    if SINGLE_HEAD:  # MHA: no loop over the group. A runtime loop around the two tile loops costs registers
        # (ptxas on sm_90: spills in every candidate config), so the common case does without it.
        dk, dv = _bwd_dkdv_head(dk, dv, k, v, Q, DO, LSE, DELTA, b, kvh, H, stride_qb, stride_qh, stride_qt,
                                stride_db, stride_dh, stride_dt, keys, lo, diag_end, T, S, qk_scale,
                                HEAD_DIM, BLOCK_M, PRECISION)
    else:
        for g in range(0, GROUP):  # every query head that reads this kv head adds into the same dk, dv
            dk, dv = _bwd_dkdv_head(dk, dv, k, v, Q, DO, LSE, DELTA, b, kvh * GROUP + g, H, stride_qb, stride_qh,
                                    stride_qt, stride_db, stride_dh, stride_dt, keys, lo, diag_end, T, S, qk_scale,
                                    HEAD_DIM, BLOCK_M, PRECISION)

    dk *= sm_scale  # the scores were q.k * sm_scale
    dk_ptrs = DK + b.to(tl.int64) * stride_dkb + kvh.to(tl.int64) * stride_dkh + keys[:, None] * stride_dks
    dv_ptrs = DV + b.to(tl.int64) * stride_dvb + kvh.to(tl.int64) * stride_dvh + keys[:, None] * stride_dvs
    tl.store(dk_ptrs + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=key_ok[:, None])
    tl.store(dv_ptrs + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=key_ok[:, None])


@triton.jit
def _bwd_dq_tiles(dq, q, do, lse2, delta, q_pos, kT_ptrs, vT_ptrs, stride_ks, stride_vs, lo, hi, S, qk_scale,
                  BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """Add the key blocks [lo, hi) to dq (BM, D); the same split into unmasked and masked blocks as the forward."""
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        keys = start_n + offs_n
        if MASKED:
            kT = tl.load(kT_ptrs + start_n * stride_ks, mask=(keys < S)[None, :], other=0.0)  # (D, BN)
            vT = tl.load(vT_ptrs + start_n * stride_vs, mask=(keys < S)[None, :], other=0.0)
        else:
            kT = tl.load(kT_ptrs + start_n * stride_ks)
            vT = tl.load(vT_ptrs + start_n * stride_vs)
        s = tl.dot(q, kT, input_precision=PRECISION) * qk_scale  # (BM, BN)
        p = tl.math.exp2(s - lse2[:, None])
        if MASKED:
            visible = keys[None, :] < S
            if CAUSAL:
                visible = visible & (keys[None, :] <= q_pos[:, None])
            p = tl.where(visible, p, 0.0)
        dp = tl.dot(do, vT, input_precision=PRECISION)  # (BM, BN)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT), input_precision=PRECISION)
    return dq


@_autotune(BWD_Q_TILES, float32=(64, 32, 4, 2), interpreted=(32, 16), key=TUNE_KEY)
@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, OUT, DO, LSE, DELTA, DQ,  # out: the forward's, like q; delta: written here, (B, H, T) float32
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_ot, stride_db, stride_dh, stride_dt, stride_dqb, stride_dqh, stride_dqt,
    H, GROUP, T, S, sm_scale, qk_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m, bh, b, h, kvh = _query_program(T, H, GROUP, BLOCK_M)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T

    q = tl.load(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + offs_m[:, None] * stride_qt
                + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b.to(tl.int64) * stride_db + h.to(tl.int64) * stride_dh + offs_m[:, None] * stride_dt
                 + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    lse2 = tl.load(LSE + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
    o = tl.load(OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + offs_m[:, None] * stride_ot
                + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)  # rowsum(dO * O), for dK/dV's pass too
    tl.store(DELTA + bh.to(tl.int64) * T + offs_m, delta, mask=row_ok)
    kT_ptrs = K + b.to(tl.int64) * stride_kb + kvh.to(tl.int64) * stride_kh + offs_d[:, None] + offs_n[None, :] * stride_ks
    vT_ptrs = V + b.to(tl.int64) * stride_vb + kvh.to(tl.int64) * stride_vh + offs_d[:, None] + offs_n[None, :] * stride_vs

    dq = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    q_pos = S - T + offs_m
    full, end = _key_range(start_m, T, S, BLOCK_M, BLOCK_N, CAUSAL)
    dq = _bwd_dq_tiles(dq, q, do, lse2, delta, q_pos, kT_ptrs, vT_ptrs, stride_ks, stride_vs, 0, full, S, qk_scale,
                       BLOCK_N, False, CAUSAL, PRECISION)
    dq = _bwd_dq_tiles(dq, q, do, lse2, delta, q_pos, kT_ptrs, vT_ptrs, stride_ks, stride_vs, full, end, S, qk_scale,
                       BLOCK_N, True, CAUSAL, PRECISION)
    dq *= sm_scale
    dq_ptrs = DQ + b.to(tl.int64) * stride_dqb + h.to(tl.int64) * stride_dqh + offs_m[:, None] * stride_dqt
    tl.store(dq_ptrs + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


# -- launchers --------------------------------------------------------------------------------------


def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def check_inputs(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> None:
    """ValueError unless the kernels handle these inputs (see the module docstring)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"flash_attention needs q (B, H, T, D) and k, v (B, KV, S, D), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    kernels.check_device(INTERPRETED, q, k, v)
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    kernels.check_dtype("flash_attention inputs", q.dtype)
    (b, h, t, d), (bk, n_kv, s, dk) = q.shape, k.shape
    if k.shape != v.shape or bk != b or dk != d:
        raise ValueError(f"k and v must both be (B, KV, S, D) with q's batch and head dim, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if d not in HEAD_DIMS:
        raise ValueError(f"flash_attention supports head dims {HEAD_DIMS}, got {d}")
    if n_kv == 0 or h % n_kv:
        raise ValueError(f"query heads ({h}) must be a multiple of kv heads ({n_kv})")
    if s == 0 or (causal and s < t):
        raise ValueError(f"every query needs a key to attend to: got {t} queries over {s} keys"
                         + (" (causal: queries are the last T of S positions, so S >= T)" if causal else ""))


def _strides(t: Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _precision(dtype: torch.dtype) -> str:
    """float32 dots as 3xTF32 (float32-level accuracy on tensor cores; "ieee" FMA dots spill heavily on sm_90);
    float16/bfloat16 dots ignore the setting."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def flash_attention_forward(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> tuple[Tensor, Tensor]:
    """Launcher: (o like q, lse (B, H, T) float32, natural log). o is laid out (B, T, H, D) and returned as a
    (B, H, T, D) view, so the model's transpose back to (B, T, H * D) is free."""
    check_inputs(q, k, v, causal)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    b, h, t, d = q.shape
    n_kv, s = k.shape[1], k.shape[2]
    o = kernels.output_buffer((b, t, h, d), q.dtype, q.device).transpose(1, 2)
    lse = kernels.output_buffer((b, h, t), torch.float32, q.device)
    if t == 0:
        return o, lse
    sm_scale = 1.0 / math.sqrt(d)

    def grid(meta: dict) -> tuple[int, int]:
        return b * h, triton.cdiv(t, meta["BLOCK_M"])

    _attn_fwd_kernel[grid](q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
                           h, h // n_kv, t, s, sm_scale * LOG2E,
                           HEAD_DIM=d, CAUSAL=causal, PRECISION=_precision(q.dtype))
    return o, lse


def _dq_buffer(q: Tensor, empty: Callable[[tuple[int, ...]], Tensor]) -> Tensor:
    """dq laid out like q where that is cheap: (B, H, T, D) for a contiguous q (a leaf's .grad then needs no
    copy), else (B, T, H, D), the model's layout (its q is a transposed view of the projection)."""
    b, h, t, d = q.shape
    return empty((b, h, t, d)) if q.is_contiguous() else empty((b, t, h, d)).transpose(1, 2)


def flash_attention_backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
                             causal: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Launcher: (dq, dk, dv) shaped and typed like q, k, v."""
    check_inputs(q, k, v, causal)
    if do.shape != q.shape or o.shape != q.shape or lse.shape != q.shape[:3] or lse.dtype != torch.float32:
        raise ValueError(f"flash_attention backward: dO {tuple(do.shape)}, O {tuple(o.shape)}, lse "
                         f"{tuple(lse.shape)} do not match q {tuple(q.shape)}")
    dq = _dq_buffer(q, lambda shape: kernels.output_buffer(shape, q.dtype, q.device))
    q, k, v, o, do = (_last_dim_contiguous(t) for t in (q, k, v, o, do.to(q.dtype)))
    lse = lse.contiguous()
    b, h, t, d = q.shape
    n_kv, s = k.shape[1], k.shape[2]
    dk = kernels.output_buffer(tuple(k.shape), k.dtype, k.device)
    dv = kernels.output_buffer(tuple(v.shape), v.dtype, v.device)
    delta = kernels.output_buffer((b, h, t), torch.float32, q.device)
    if t == 0:
        return dq, dk.zero_(), dv.zero_()
    sm_scale, group, precision = 1.0 / math.sqrt(d), h // n_kv, _precision(q.dtype)

    # dQ first: its programs also write delta = rowsum(dO * O), which every dK/dV program reads
    _attn_bwd_dq_kernel[lambda meta: (b * h, triton.cdiv(t, meta["BLOCK_M"]))](
        q, k, v, o, do, lse, delta, dq, *_strides(q), *_strides(k), *_strides(v), *_strides(o), *_strides(do),
        *_strides(dq), h, group, t, s, sm_scale, sm_scale * LOG2E,
        HEAD_DIM=d, CAUSAL=causal, PRECISION=precision)
    _attn_bwd_dkdv_kernel[lambda meta: (triton.cdiv(s, meta["BLOCK_N"]), b * n_kv)](
        q, k, v, do, lse, delta, dk, dv, *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk),
        *_strides(dv), h, group, t, s, sm_scale, sm_scale * LOG2E,
        HEAD_DIM=d, CAUSAL=causal, PRECISION=precision, SINGLE_HEAD=group == 1)
    return dq, dk, dv


# The launchers as custom ops: torch.compile sees one opaque call with known output shapes (the fake
# implementations) instead of tracing into Triton's autotuner and launch code.
@torch.library.custom_op("scratchlm::flash_attention_fwd", mutates_args=())
def _flash_fwd_op(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> tuple[Tensor, Tensor]:
    return flash_attention_forward(q, k, v, causal)


@_flash_fwd_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> tuple[Tensor, Tensor]:
    b, h, t, d = q.shape
    return q.new_empty((b, t, h, d)).transpose(1, 2), q.new_empty((b, h, t), dtype=torch.float32)


@torch.library.custom_op("scratchlm::flash_attention_bwd", mutates_args=())
def _flash_bwd_op(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
                  causal: bool) -> tuple[Tensor, Tensor, Tensor]:
    return flash_attention_backward(do, q, k, v, o, lse, causal)


@_flash_bwd_op.register_fake
def _(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
      causal: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _dq_buffer(q, q.new_empty), k.new_empty(k.shape), v.new_empty(v.shape)


class FlashAttentionFunction(torch.autograd.Function):
    """The Triton FlashAttention-2 with autograd: saves q, k, v, O and the logsumexp."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        o, lse = torch.ops.scratchlm.flash_attention_fwd(q, k, v, causal)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        return o

    @staticmethod
    def backward(ctx, do: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = torch.ops.scratchlm.flash_attention_bwd(do, q, k, v, o, lse, ctx.causal)
        return dq, dk, dv, None


def flash_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True) -> Tensor:
    """softmax(q k^T / sqrt(D)) v with the Triton kernels. q: (B, H, T, D), k, v: (B, KV, S, D); causal: the
    queries are the last T of the S positions. The readable twins: scratchlm.kernels.flash_reference (same
    algorithm, PyTorch) and scratchlm.model.attention.naive_attention (plain softmax)."""
    check_inputs(q, k, v, causal)
    return FlashAttentionFunction.apply(q, k, v, causal)


# -- the model's backend ----------------------------------------------------------------------------

_logged_fallbacks: set[str] = set()

# Queries a row up to which attention against a KV cache runs the decode kernel (a program per query, each
# reading the row's keys: fine for a few; a prompt's prefill goes to the fallback below)
MAX_DECODE_QUERIES = 16


def _fallback_reason(q: Tensor, sliding_window: int | None, mask: Tensor | None) -> str | None:
    if mask is not None:
        return "an explicit mask with several queries per row (KV-cache prefill)"
    if sliding_window is not None:
        return "a sliding window"
    if q.shape[-1] not in HEAD_DIMS:
        return f"head dim {q.shape[-1]} (kernels: {HEAD_DIMS})"
    if q.dtype not in kernels.KERNEL_DTYPES:
        return f"dtype {q.dtype}"
    return None


def flash_attention_fn(q: Tensor, k: Tensor, v: Tensor, sliding_window: int | None = None,
                       mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
    """The "flash" attention backend (signature of scratchlm.model.attention). A decode step (up to
    MAX_DECODE_QUERIES queries a row against a KV cache, the queries' positions given: decoding, speculative
    verification) runs scratchlm.kernels.decode_attention on the positions, leaving the mask unused. Cases the kernels do not cover (a mask over several queries, a mask
    without positions, a sliding window without a mask, other head dims or dtypes) go to sdpa on CUDA, naive
    elsewhere, logged once at debug level. Tensors on a device Triton cannot run on are an error: nothing
    "flash" could mean there."""
    if q.device.type != "cuda" and not (INTERPRETED and q.device.type == "cpu"):
        raise ValueError(f"attention backend 'flash' is not available on {q.device.type}: its Triton kernels need "
                         "CUDA tensors (or TRITON_INTERPRET=1, for tests); use 'naive' or 'sdpa'")
    if (positions is not None and q.shape[2] <= MAX_DECODE_QUERIES and q.shape[-1] in HEAD_DIMS
            and q.dtype in kernels.KERNEL_DTYPES):
        return decode_attention(q, k, v, positions.long(), sliding_window)
    reason = _fallback_reason(q, sliding_window, mask)
    if reason is None:
        return FlashAttentionFunction.apply(q, k, v, True)
    fallback = sdpa_attention if q.device.type == "cuda" else naive_attention
    if not torch.compiler.is_compiling() and reason not in _logged_fallbacks:
        _logged_fallbacks.add(reason)
        log.debug("flash attention: %s is not supported by the kernels; using %s", reason, fallback.__name__)
    return fallback(q, k, v, sliding_window, mask)


ATTENTION_BACKENDS["flash"] = flash_attention_fn
