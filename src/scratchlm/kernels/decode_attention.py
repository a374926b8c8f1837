"""Attention for a decode step in Triton: a few queries per sequence against its row of the KV cache.

q: (B, H, T, D), T queries per row (1 in plain decoding; speculative verification scores k + 1); k, v:
(B, KV, S, D), the cache rows (H a multiple of KV: query head h reads kv head h // (H / KV)); positions:
(B, T) or (1, T) long, each query's position p (< S): the query sees key slots j <= p, and with a sliding
window W only p - j < W (what `scratchlm.model.attention.position_mask` spells out as a mask; the kernel takes
the positions, so no mask is built, stored or read).

Why a kernel of its own: a decode step asks for B x H dot products against at most S keys, far too little work
for the fused attention kernels built for long queries (cuDNN's took ~7 us per layer on an H100 for one short
row), and a cache row holds S = max_len slots of which only those up to the row's position are filled.

A program takes one (query, query head, split of the key slots) and walks the key blocks of its split that hold
visible slots, with an online softmax in float32 (base 2, the scale folded into q): a row at position p loads
the keys and values of ceil((p + 1) / BLOCK_N) blocks (fewer with a window), not of all S slots. At batch 1
the B x T x H programs of one split each would walk their blocks one after the other on a few SMs (11.6 us a
layer for 256 slots on an H100): the slots are split ("flash-decoding") until there are about
PROGRAMS_PER_SM programs per SM, each program writes its partial (max, sum, weighted values), and a second
kernel combines the splits of each (query, head). With enough rows there is one split and no second kernel.
BLOCK_N shrinks with the work: small blocks at batch 1 (more programs), large ones for big batches (`tiles`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from scratchlm import kernels

INTERPRETED = bool(triton.knobs.runtime.interpret)

BLOCK_NS = (128, 64, 32, 16)  # key slots per loop step: one (BLOCK_N, D) tile of k and of v in registers
MAX_TILE = 8192  # elements of a (BLOCK_N, D) tile
NUM_WARPS = 2
PROGRAMS_PER_SM = 4  # splits of the key slots are added until B x H x splits reaches this many per SM
# Programmatic dependent launch (`launch`) only for launches this small: queries x heads x head dim values, and
# 128-wide heads only for one row. In H100 model forwards through the cache it saved 2-11% at one row (also
# with 5-9 queries at 64-wide heads, 5 at 128) and up to 8 rows of 64-wide heads, and cost 5-8% past that
# (1.3B batch 2-32 and 9 queries; 124M batch 32).
PDL_MAX_VALUES = 10240


@triton.jit
def _attend(q, k, v, visible, m_i, l_i, acc):
    """One block of keys k and values v (BLOCK_N, D) into the online softmax of q (D,) (scaled, log2 units):
    the running max m_i, sum l_i and weighted values acc (D,), all float32, updated; slots not `visible` weigh 0.
    Needs a visible slot in the block or a finite m_i (else exp2(-inf - -inf) is NaN)."""
    scores = tl.where(visible, tl.sum(k.to(tl.float32) * q[None, :], axis=1), float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, axis=0))
    alpha = tl.exp2(m_i - m_new)  # 0 on the first block (m_i = -inf)
    p = tl.exp2(scores - m_new)  # (BLOCK_N,); 0 where not visible
    return m_new, l_i * alpha + tl.sum(p, axis=0), acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)


@triton.jit
def _decode_attention_kernel(Q, K, V, POS, OUT, M_PART, L_PART, n_queries, stride_qb, stride_qh, stride_qt,
                             stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs, stride_pb, stride_pt,
                             stride_ob, stride_oh, stride_ot, split_len, window, scale_log2, GROUP: tl.constexpr,
                             D: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, PDL: tl.constexpr):
    """Visible slots of a query at position p: [max(0, p - window + 1), p] (window 0: [0, p]). SPLIT: slots
    [split * split_len, (split + 1) * split_len) only, and OUT (B x T, H, splits, D) float32 gets the
    unnormalised weighted values, M_PART / L_PART (B x T, H, splits) the running max and sum; else OUT
    (B, H, T, D) gets the attention output.

    Under programmatic dependent launch the row's position is read before waiting for the kernel before
    (which wrote q), and so is, with splits (a block or two a program: small batches), the split's first
    block of keys and values; its newest slot (with several queries a row: the whole block) is read again
    after the wait, since the kernel before may have stored the step's keys and values there (`scratchlm.kernels.gemv.gemv_qkv` does). Without splits the
    programs loop over many blocks and the first one taken out of the loop slowed batch 128 by 4-10% on an
    H100. So the older slots and the positions must not come from the kernel right before if it lets its
    dependents start early (none of this package's kernels writes them)."""
    query = tl.program_id(0).to(tl.int64)  # row * T + t
    row = query // n_queries
    t = query % n_queries
    head = tl.program_id(1)
    split = tl.program_id(2)
    kv_head = (head // GROUP).to(tl.int64)
    offs_d = tl.arange(0, D)
    k_base = K + row * stride_kb + kv_head * stride_kh
    v_base = V + row * stride_vb + kv_head * stride_vh
    position = tl.load(POS + row * stride_pb + t * stride_pt).to(tl.int32)  # int32 loop bounds, as the split's
    first_visible = tl.where(window > 0, tl.maximum(position - window + 1, 0), 0)
    split_start = split * split_len
    start_block = tl.maximum(split_start, (first_visible // BLOCK_N) * BLOCK_N)  # blocks before the window: skipped
    stop = tl.minimum(split_start + split_len, position + 1)  # blocks past the position: never visited
    m_i = tl.full((), float("-inf"), tl.float32)  # running max of the scores (log2 units)
    l_i = tl.zeros((), tl.float32)  # running sum of exp2(score - m_i)
    acc = tl.zeros((D,), tl.float32)  # running sum of exp2(score - m_i) * v
    if SPLIT:  # a block or two a program: its first block is read before the wait (see above)
        offs_n = start_block + tl.arange(0, BLOCK_N)
        visible = (offs_n >= first_visible) & (offs_n <= position) & (start_block < stop)  # (BLOCK_N,)
        k_ptrs = k_base + offs_n[:, None] * stride_ks + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vs + offs_d[None, :]
        k = tl.load(k_ptrs, mask=visible[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=visible[:, None], other=0.0)
    if PDL:  # the rest depends on the kernel before; let the next one start (and read its weights)
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    q = tl.load(Q + row * stride_qb + head * stride_qh + t * stride_qt + offs_d).to(tl.float32) * scale_log2
    first_loaded = start_block
    if SPLIT:
        if PDL:  # the newest slot(s), again: the kernel before may have written them
            newest = (visible & ((offs_n == position) | (n_queries > 1)))[:, None]
            k = tl.where(newest, tl.load(k_ptrs, mask=newest, other=0.0), k)
            v = tl.where(newest, tl.load(v_ptrs, mask=newest, other=0.0), v)
        if start_block < stop:
            m_i, l_i, acc = _attend(q, k, v, visible, m_i, l_i, acc)
        first_loaded = start_block + BLOCK_N
    for start in range(first_loaded, stop, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        visible = (offs_n >= first_visible) & (offs_n <= position)
        k = tl.load(k_base + offs_n[:, None] * stride_ks + offs_d[None, :], mask=visible[:, None], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vs + offs_d[None, :], mask=visible[:, None], other=0.0)
        m_i, l_i, acc = _attend(q, k, v, visible, m_i, l_i, acc)
    if SPLIT:  # a split with no visible slot leaves m = -inf, l = 0, acc = 0: weight 0 in the combination
        part = (query * tl.num_programs(1) + head) * tl.num_programs(2) + split
        tl.store(M_PART + part, m_i)
        tl.store(L_PART + part, l_i)
        tl.store(OUT + part * D + offs_d, acc)
    else:
        out = OUT + row * stride_ob + head * stride_oh + t * stride_ot
        tl.store(out + offs_d, (acc / l_i).to(OUT.dtype.element_ty))


@triton.jit
def _combine_splits_kernel(ACC_PART, M_PART, L_PART, OUT, n_queries, stride_ob, stride_oh, stride_ot, n_splits,
                           D: tl.constexpr, BLOCK_SPLITS: tl.constexpr, PDL: tl.constexpr):
    """out = sum_s 2^(m_s - m) acc_s / sum_s 2^(m_s - m) l_s over the splits s of one (query, head), m = max m_s."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    query = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_SPLITS)
    offs_d = tl.arange(0, D)
    first = (query * tl.num_programs(1) + head) * n_splits
    m = tl.load(M_PART + first + offs_s, mask=offs_s < n_splits, other=float("-inf"))  # (BLOCK_SPLITS,)
    l_s = tl.load(L_PART + first + offs_s, mask=offs_s < n_splits, other=0.0)
    acc = tl.load(ACC_PART + (first + offs_s)[:, None] * D + offs_d[None, :], mask=(offs_s < n_splits)[:, None],
                  other=0.0)  # (BLOCK_SPLITS, D)
    weight = tl.exp2(m - tl.max(m, axis=0))  # 0 for splits that saw nothing (m = -inf)
    out = tl.sum(weight[:, None] * acc, axis=0) / tl.sum(weight * l_s, axis=0)
    out_ptrs = OUT + (query // n_queries) * stride_ob + head * stride_oh + (query % n_queries) * stride_ot + offs_d
    tl.store(out_ptrs, out.to(OUT.dtype.element_ty))


def tiles(b: int, h: int, s: int, d: int, sm_count: int) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, PROGRAMS_PER_SM): the largest BLOCK_N (tile of at most MAX_TILE elements) whose
    blocks still give every one of PROGRAMS_PER_SM x SMs programs a block of its own, else the smallest; 2
    warps. The H100 sweep of benchmarks/decode_attention.py (BLOCK_N 16-128, 2-8 warps, 2-8 programs per SM,
    batch 1-32, 256-2048 slots, the three GPT presets' heads) had 2 warps fastest everywhere, 16-32 slots at
    batch 1 and 64-128 from batch 8."""
    for block_n in BLOCK_NS:
        if block_n * d <= MAX_TILE and triton.cdiv(s, block_n) * b * h >= PROGRAMS_PER_SM * sm_count:
            return block_n, NUM_WARPS, PROGRAMS_PER_SM
    return BLOCK_NS[-1], NUM_WARPS, PROGRAMS_PER_SM


def splits(b: int, h: int, s: int, sm_count: int, block_n: int, programs_per_sm: int) -> tuple[int, int]:
    """(number of splits, key slots per split, a multiple of block_n) for B x H programs over S slots."""
    blocks = triton.cdiv(s, block_n)
    wanted = min(blocks, max(1, triton.cdiv(programs_per_sm * sm_count, b * h)))
    blocks_per_split = triton.cdiv(blocks, wanted)
    return triton.cdiv(blocks, blocks_per_split), blocks_per_split * block_n


def query_positions(positions: Tensor, queries: int) -> Tensor:
    """positions as (B or 1, T): (B,) or (1,) when T = 1, (T,) for every row alike, or already (B or 1, T)."""
    if positions.dim() == 1:
        return positions.view(-1, 1) if queries == 1 else positions.view(1, -1)
    return positions


def check_inputs(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, sliding_window: int | None) -> None:
    """positions: already (B or 1, T) (`query_positions`)."""
    kernels.check_device(INTERPRETED, q, k, v, positions)
    for t_ in (q, k, v):
        kernels.check_dtype("q, k and v", t_.dtype)
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    b, h, t, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d or h % k.shape[1]:
        raise ValueError(f"k and v must be (B, KV, S, D) with KV dividing H, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if d & (d - 1) or not 16 <= d <= 256:
        raise ValueError(f"head dim must be a power of two in [16, 256], got {d}")
    if positions.dtype != torch.long or positions.dim() != 2 or positions.shape[0] not in (1, b) or positions.shape[1] != t:
        raise ValueError(f"positions must be long (B, T), (1, T), (T,) or for T = 1 (B,), got {positions.dtype} "
                         f"{tuple(positions.shape)} for q {tuple(q.shape)}")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
    for name, t_ in (("q", q), ("k", k), ("v", v)):
        if t_.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension")


def launch_options(q: Tensor) -> dict[str, bool]:
    """Programmatic dependent launch for small launches only (see PDL_MAX_VALUES); q (B, H, T, D)."""
    b, h, t, d = q.shape
    return kernels.pdl_options(q) if (b == 1 or d <= 64) and b * t * h * d <= PDL_MAX_VALUES else {}


def launch(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, sliding_window: int | None = None,
           config: tuple[int, int, int] | None = None) -> Tensor:
    """The kernels on checked inputs (positions (B or 1, T)). config: (BLOCK_N, num_warps, PROGRAMS_PER_SM),
    default `tiles` (benchmarks/decode_attention.py sweeps the alternatives)."""
    b, h, t, d = q.shape
    queries = b * t  # the kernels see B x T rows of one query each
    sm_count = kernels.sm_count(q.device)
    # tiles and splits as for one query a row: the T queries of a row see about the same slots, and more
    # programs of one small block each beat fewer that walk several (the visible slots are unknown here)
    block_n, num_warps, programs_per_sm = config or tiles(b, h, k.shape[2], d, sm_count)
    out = kernels.heads_per_query(b, h, t, d, q.dtype, q.device)
    pdl = launch_options(q)
    stride_pb = positions.stride(0) if positions.shape[0] > 1 else 0  # one set of positions shared by every row
    n_splits, split_len = splits(b, h, k.shape[2], sm_count, block_n, programs_per_sm)
    if n_splits > 1:
        acc_part = kernels.output_buffer((queries, h, n_splits, d), torch.float32, q.device)
        m_part, l_part = (kernels.output_buffer((queries, h, n_splits), torch.float32, q.device) for _ in range(2))
    else:  # the kernel writes `out` directly; the partial pointers are not read
        acc_part, m_part, l_part = out, out, out
    _decode_attention_kernel[(queries, h, n_splits)](
        q, k, v, positions, acc_part, m_part, l_part, t, q.stride(0), q.stride(1), q.stride(2), k.stride(0),
        k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), stride_pb, positions.stride(1),
        out.stride(0), out.stride(1), out.stride(2), split_len, sliding_window or 0, 1.4426950408889634 / d**0.5,
        GROUP=h // k.shape[1], D=d, BLOCK_N=block_n, SPLIT=n_splits > 1, PDL=bool(pdl), num_warps=num_warps, **pdl)
    if n_splits > 1:
        _combine_splits_kernel[(queries, h)](acc_part, m_part, l_part, out, t, out.stride(0), out.stride(1),
                                             out.stride(2), n_splits, D=d,
                                             BLOCK_SPLITS=triton.next_power_of_2(n_splits), PDL=bool(pdl),
                                             num_warps=4, **pdl)
    return out


# A custom op, so torch.compile keeps the launch as one opaque call inside a compiled decode step.
@torch.library.custom_op("scratchlm::decode_attention", mutates_args=())
def _decode_attention_op(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, sliding_window: int | None) -> Tensor:
    return launch(q, k, v, positions, sliding_window)


@_decode_attention_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, sliding_window: int | None) -> Tensor:
    return kernels.heads_per_query(*q.shape, q.dtype, q.device, torch.empty)


def decode_attention(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, sliding_window: int | None = None) -> Tensor:
    """softmax(q k^T / sqrt(D)) v over each query's visible slots (see the module docstring); forward only
    (decoding needs no gradients). positions: long, each < S: (B, T) or (1, T), or (T,) (the same for every
    row), or when T = 1 (B,) or (1,). Returns (B, H, T, D) in q's dtype (laid out as (B, T, H, D))."""
    positions = query_positions(positions, q.shape[2] if q.dim() == 4 else 1)
    check_inputs(q, k, v, positions, sliding_window)
    return _decode_attention_op(q, k, v, positions.contiguous(), sliding_window)
