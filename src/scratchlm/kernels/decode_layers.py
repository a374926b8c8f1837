"""Every layer of a batch-1 decode step in one persistent Triton kernel.

A batch-1 decode step of a small model is a chain of tiny kernels: per layer the QKV GEMV (with RMSNorm, RoPE
and the cache store), decode attention and its split combination, the output projection, the gate/up GEMV and
the down GEMV (`scratchlm.kernels.gemv`, `.decode_attention`). On an H100 each costs 3-4 us from launch to
finish for ~1 us of bytes at GPT-2-small's sizes, so the step reached ~35% of the bandwidth bound however fast
each kernel read its bytes. Here one launch runs them all: one program per SM (all resident at once) walks
the layers' five phases, each phase a list of tasks dealt round-robin to the programs:

  A  QKV rows of one head (norm, product, RoPE, q to a buffer, k and v into the cache)   per KV group
  B  one (head, split of the visible key slots) of attention; the split arriving last combines  per head
  C  rows of the output projection + the residual (the residual stream x is updated in place)
  D  rows of gate and up (norm, products, silu(gate) * up)
  E  rows of the down projection + the residual

No grid-wide barrier: a task waits only for the counts of finished tasks it reads (B for its KV group's A
tasks; C for all B heads; D for all C; E for all D; the next layer's A for all E), published by one atomic
add per task (release after a CTA barrier; acquire by the waiting thread, then a CTA barrier). Before
waiting, a task loads its first chunk of weights (nothing in the step writes them): the weight stream of a
phase overlaps the tail of the one before, as programmatic dependent launch does between kernels. Reads of
what other programs wrote in this launch go through L2 (`.cg`), never a stale L1 line.

The counters sit in a per-device buffer that is zero at launch: the program finishing last zeroes it. A wait
gives up after MAX_SPINS polls (a bug, or programs that are not all resident, then shows as a non-zero
`timeouts()` count and wrong numbers, not as a hung GPU). All programs must be resident together: the grid
is one program per SM (a cooperative launch on CUDA checks it), and one stream at a time may run the kernel
(the counters are shared). Under the CPU interpreter programs run one after another, so the grid is one
program: the tests check the arithmetic there and the synchronization on a GPU.

Arithmetic and rounding follow the kernels it replaces (float32 accumulation, products rounded to the
activation dtype before the residual add, silu(gate) * up rounded once), so its steps match the GEMV path's
up to float32 summation order. Used by `scratchlm.model.TransformerLM` for one row through a KV cache under
no_grad on CUDA, where the one-row GEMV applies, outside torch.compile (`enabled(False)` is the A/B).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from scratchlm import kernels
from scratchlm.kernels.decode_attention import _attend
from scratchlm.kernels.gemv import _chunk_product, _store_rotated

INTERPRETED = bool(triton.knobs.runtime.interpret)

POINTERS = ("attn_norm", "qkv", "o_proj", "ffn_norm", "gate_up", "down", "k_cache", "v_cache")  # a table row
MAX_SPINS = 1 << 22  # polls of a counter before a wait gives up (seconds on a GPU)
BLOCK_N = 8  # weight rows a GEMV task
MAX_BLOCK_K = 1024  # columns of a task's weight chunk (the first chunk is read before waiting)
# All programs must be resident at once: NUM_WARPS x PROGRAMS_PER_SM <= 8 guarantees it on every NVIDIA GPU
# (a thread holds at most 255 registers; 8 warps of them fit an SM's 64K), whatever the kernel compiles to.
NUM_WARPS = 4
PROGRAMS_PER_SM = 2

_enabled = False  # off by default: see the module docstring


@contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Use (True) or bypass (False) the persistent kernel for batch-1 decode steps within the block (the model
    then runs its layers' kernels one by one); CUDA graphs made inside keep the choice."""
    global _enabled
    previous, _enabled = _enabled, on
    try:
        yield
    finally:
        _enabled = previous


def is_enabled() -> bool:
    return _enabled


@dataclass(frozen=True)
class LayerShapes:
    """What the kernel needs to know of the model and its cache (every layer alike)."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    eps: float
    sliding_window: int | None = None


@triton.jit
def _wait(COUNT, target, TIMEOUTS, MAX_SPINS: tl.constexpr):
    """Until *COUNT >= target (acquire, one thread), then a CTA barrier: the counted tasks' writes are visible."""
    seen = tl.atomic_add(COUNT, 0, sem="acquire", scope="gpu")
    spins = 0
    while (seen < target) & (spins < MAX_SPINS):
        seen = tl.atomic_add(COUNT, 0, sem="acquire", scope="gpu")
        spins += 1
    if seen < target:
        tl.atomic_add(TIMEOUTS, 1)
    tl.debug_barrier()


@triton.jit
def _arrive(COUNT):
    """Count a finished task, after every thread of the program issued its writes; returns the count before."""
    tl.debug_barrier()
    return tl.atomic_add(COUNT, 1, sem="acq_rel", scope="gpu")


@triton.jit
def _first_task(pid, offset, programs):
    """A phase's tasks go to programs offset, offset + 1, ... (mod programs): each phase starts where the one
    before ended, so a program with nothing to do in one phase is the one that takes the next phase's first
    tasks, and has their weights loading while the others finish."""
    return (pid - offset + programs) % programs


@triton.jit
def _pointer(TABLE, layer, i, DTYPE: tl.constexpr):
    return tl.load(TABLE + layer * 8 + i).to(tl.pointer_type(DTYPE))


@triton.jit
def _weights(W, offs_n, row_ok, K, start, BLOCK_K: tl.constexpr):
    """Rows offs_n of W (N, K) row-major, columns [start, start + BLOCK_K) -> (BLOCK_N, BLOCK_K)."""
    offs_k = start + tl.arange(0, BLOCK_K)
    return tl.load(W + offs_n.to(tl.int64)[:, None] * K + offs_k[None, :],
                   mask=row_ok[:, None] & (offs_k < K)[None, :], other=0.0)


@triton.jit
def _first_chunk(X, K, BLOCK_K: tl.constexpr):
    """x[:BLOCK_K] (zeros past K), read through L2: what a task reads first of its input row, once."""
    offs_k = tl.arange(0, BLOCK_K)
    return tl.load(X + offs_k, mask=offs_k < K, other=0.0, cache_modifier=".cg")


@triton.jit
def _rstd(X, x_first, K, eps, BLOCK_K: tl.constexpr):
    """RMSNorm's 1 / rms of the row x (K,), of which x_first is the first chunk."""
    squares = x_first.to(tl.float32) * x_first.to(tl.float32)
    for start in range(BLOCK_K, K, BLOCK_K):
        offs_k = start + tl.arange(0, BLOCK_K)
        x = tl.load(X + offs_k, mask=offs_k < K, other=0.0, cache_modifier=".cg").to(tl.float32)
        squares += x * x
    return tl.rsqrt(tl.sum(squares, axis=0) / K + eps)


@triton.jit
def _product(W, offs_n, row_ok, w_first, X, x_first, G, K, rstd, NORM: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_N,) float32: rows offs_n of W times x (times rstd * g, rounded as RMSNorm rounds, when NORM);
    w_first, x_first: the rows' and the input's first BLOCK_K columns, already loaded."""
    g = x_first
    if NORM:
        g = tl.load(G + tl.arange(0, BLOCK_K), mask=tl.arange(0, BLOCK_K) < K, other=0.0)
    acc = _chunk_product(x_first, x_first, g, w_first, rstd, NORM, False)
    for start in range(BLOCK_K, K, BLOCK_K):
        offs_k = start + tl.arange(0, BLOCK_K)
        w = _weights(W, offs_n, row_ok, K, start, BLOCK_K)
        x = tl.load(X + offs_k, mask=offs_k < K, other=0.0, cache_modifier=".cg")
        g = x
        if NORM:
            g = tl.load(G + offs_k, mask=offs_k < K, other=0.0)
        acc += _chunk_product(x, x, g, w, rstd, NORM, False)
    return acc


@triton.jit
def _add_residual(acc, X, offs_n, row_ok):
    """x[offs_n] += the product rounded to x's dtype (as the unfused model adds two tensors of that dtype)."""
    residual = tl.load(X + offs_n, mask=row_ok, other=0.0, cache_modifier=".cg").to(tl.float32)
    y = acc.to(X.dtype.element_ty).to(tl.float32) + residual
    tl.store(X + offs_n, y.to(X.dtype.element_ty), mask=row_ok)


@triton.jit
def _decode_layers_kernel(X, POS, TABLE, COS, SIN, Q, ATT, HB, M_PART, L_PART, ACC_PART, COUNTS, TIMEOUTS,
                          n_layers, d_model, d_ff, stride_ch, stride_cs, window, eps, scale_log2,
                          H: tl.constexpr, KV: tl.constexpr, HALF: tl.constexpr, SPLITS: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_S: tl.constexpr,
                          MAX_SPINS: tl.constexpr, PDL: tl.constexpr):
    """X (d_model,): the step's residual stream, updated in place; POS (1,): its position; TABLE (n_layers, 8)
    int64: addresses of each layer's tensors (POINTERS); COS/SIN (max_len, HALF); Q, ATT (H * D,), HB (d_ff,):
    scratch; M_PART/L_PART (H, SPLITS), ACC_PART (H, SPLITS, D) float32: attention's partial results; COUNTS
    (n_layers * (KV + H + 4) + 1,) int32, zero at launch and zeroed again at exit (see the module docstring)."""
    DTYPE: tl.constexpr = X.dtype.element_ty
    D: tl.constexpr = 2 * HALF
    GROUP: tl.constexpr = H // KV
    TASKS_PER_HEAD: tl.constexpr = D // BLOCK_N
    PER_LAYER: tl.constexpr = KV + H + 4  # counters: A per KV group, B arrivals per head, B, C, D, E done
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    n_a = (H + 2 * KV) * TASKS_PER_HEAD
    n_c = tl.cdiv(d_model, BLOCK_N)
    n_d = tl.cdiv(d_ff, BLOCK_N)
    rows = tl.arange(0, BLOCK_N)
    if PDL:  # X and the position come from the kernels before
        tl.extra.cuda.gdc_wait()
    position = tl.load(POS).to(tl.int32)
    offset = pid * 0  # where the next phase's tasks start (see _first_task)
    for layer in range(n_layers):
        counts = COUNTS + layer * PER_LAYER
        attn_norm = _pointer(TABLE, layer, 0, DTYPE)
        w_qkv = _pointer(TABLE, layer, 1, DTYPE)
        k_cache = _pointer(TABLE, layer, 6, DTYPE)
        v_cache = _pointer(TABLE, layer, 7, DTYPE)
        if PDL and layer == n_layers - 1:  # the LM head may start streaming its weights
            tl.extra.cuda.gdc_launch_dependents()
        # A: q, k, v rows of one head (interleaved rotation pairs, as gemv's ROPE tiles)
        first = _first_task(pid, offset, programs)
        for task in range(first, n_a, programs):
            first_pair = task * (BLOCK_N // 2)
            head = first_pair // HALF
            j = first_pair % HALF + rows // 2
            offs_n = head * D + j + (rows % 2) * HALF
            w_first = _weights(w_qkv, offs_n, offs_n >= 0, d_model, 0, BLOCK_K)
            if layer > 0 and task == first:
                _wait(counts - 1, n_c, TIMEOUTS, MAX_SPINS)  # the layer before's E tasks (as many as C's)
            x_first = _first_chunk(X, d_model, BLOCK_K)
            rstd = _rstd(X, x_first, d_model, eps, BLOCK_K)
            acc = _product(w_qkv, offs_n, offs_n >= 0, w_first, X, x_first, attn_norm, d_model, rstd, True, BLOCK_K)
            pair_j = first_pair % HALF + tl.arange(0, BLOCK_N // 2)
            cos = tl.load(COS + position * HALF + pair_j).to(tl.float32)
            sin = tl.load(SIN + position * HALF + pair_j).to(tl.float32)
            _store_rotated(acc.to(DTYPE).to(tl.float32), head, j, position, cos, sin, Q, k_cache, v_cache,
                           stride_ch, stride_cs, stride_ch, stride_cs, H, KV, HALF, BLOCK_N)
            group = tl.where(head < H, head // GROUP, tl.where(head < H + KV, head - H, head - H - KV))
            _arrive(counts + group)
        # B: attention of one head over one split of the visible slots (splits sized by the position)
        offs_d = tl.arange(0, D)
        first_visible = tl.where(window > 0, tl.maximum(position - window + 1, 0), 0)
        blocks = tl.cdiv(position + 1 - (first_visible // BLOCK_S) * BLOCK_S, BLOCK_S)
        split_len = tl.cdiv(blocks, SPLITS) * BLOCK_S
        offset = (offset + n_a) % programs
        for task in range(_first_task(pid, offset, programs), H * SPLITS, programs):
            head = task // SPLITS
            split = task % SPLITS
            kv_head = head // GROUP
            k_base = k_cache + kv_head * stride_ch
            v_base = v_cache + kv_head * stride_ch
            start = (first_visible // BLOCK_S) * BLOCK_S + split * split_len
            stop = tl.minimum(start + split_len, position + 1)
            offs_s = start + tl.arange(0, BLOCK_S)
            visible = (offs_s >= first_visible) & (offs_s < stop)
            k = tl.load(k_base + offs_s[:, None] * stride_cs + offs_d[None, :], mask=visible[:, None], other=0.0)
            v = tl.load(v_base + offs_s[:, None] * stride_cs + offs_d[None, :], mask=visible[:, None], other=0.0)
            _wait(counts + kv_head, (GROUP + 2) * TASKS_PER_HEAD, TIMEOUTS, MAX_SPINS)
            newest = (visible & (offs_s == position))[:, None]  # this step's key and value: stored by A
            k = tl.where(newest, tl.load(k_base + offs_s[:, None] * stride_cs + offs_d[None, :], mask=newest,
                                         other=0.0, cache_modifier=".cg"), k)
            v = tl.where(newest, tl.load(v_base + offs_s[:, None] * stride_cs + offs_d[None, :], mask=newest,
                                         other=0.0, cache_modifier=".cg"), v)
            q = tl.load(Q + head * D + offs_d, cache_modifier=".cg").to(tl.float32) * scale_log2
            m_i = tl.full((), float("-inf"), tl.float32)
            l_i = tl.zeros((), tl.float32)
            acc = tl.zeros((D,), tl.float32)
            if start < stop:
                m_i, l_i, acc = _attend(q, k, v, visible, m_i, l_i, acc)
            for block in range(start + BLOCK_S, stop, BLOCK_S):
                offs_s = block + tl.arange(0, BLOCK_S)
                visible = offs_s < stop
                k = tl.load(k_base + offs_s[:, None] * stride_cs + offs_d[None, :], mask=visible[:, None],
                            other=0.0, cache_modifier=".cg")
                v = tl.load(v_base + offs_s[:, None] * stride_cs + offs_d[None, :], mask=visible[:, None],
                            other=0.0, cache_modifier=".cg")
                m_i, l_i, acc = _attend(q, k, v, visible, m_i, l_i, acc)
            part = head * SPLITS + split
            tl.store(M_PART + part, m_i)
            tl.store(L_PART + part, l_i)
            tl.store(ACC_PART + part * D + offs_d, acc)
            if _arrive(counts + KV + head) == SPLITS - 1:  # the last split of the head combines them all
                offs_p = head * SPLITS + tl.arange(0, SPLITS)
                m = tl.load(M_PART + offs_p, cache_modifier=".cg")
                weight = tl.exp2(m - tl.max(m, axis=0))  # 0 for splits that saw nothing (m = -inf)
                l_sum = tl.sum(weight * tl.load(L_PART + offs_p, cache_modifier=".cg"), axis=0)
                parts = tl.load(ACC_PART + offs_p[:, None] * D + offs_d[None, :], cache_modifier=".cg")
                tl.store(ATT + head * D + offs_d, (tl.sum(weight[:, None] * parts, axis=0) / l_sum).to(DTYPE))
                _arrive(counts + KV + H)
        # C: output projection rows + residual
        w_o = _pointer(TABLE, layer, 2, DTYPE)
        offset = (offset + H * SPLITS) % programs
        first = _first_task(pid, offset, programs)
        for task in range(first, n_c, programs):
            offs_n = task * BLOCK_N + rows
            row_ok = offs_n < d_model
            w_first = _weights(w_o, offs_n, row_ok, H * D, 0, BLOCK_K)
            if task == first:
                _wait(counts + KV + H, H, TIMEOUTS, MAX_SPINS)
            acc = _product(w_o, offs_n, row_ok, w_first, ATT, _first_chunk(ATT, H * D, BLOCK_K), ATT, H * D, 0.0, False,
                           BLOCK_K)
            _add_residual(acc, X, offs_n, row_ok)
            _arrive(counts + KV + H + 1)
        # D: gate and up rows (norm first), silu(gate) * up
        ffn_norm = _pointer(TABLE, layer, 3, DTYPE)
        w_gate_up = _pointer(TABLE, layer, 4, DTYPE)
        offset = (offset + n_c) % programs
        first = _first_task(pid, offset, programs)
        for task in range(first, n_d, programs):
            offs_n = task * BLOCK_N + rows
            row_ok = offs_n < d_ff
            gate_first = _weights(w_gate_up, offs_n, row_ok, d_model, 0, BLOCK_K)
            up_first = _weights(w_gate_up, d_ff + offs_n, row_ok, d_model, 0, BLOCK_K)
            if task == first:
                _wait(counts + KV + H + 1, n_c, TIMEOUTS, MAX_SPINS)
            x_first = _first_chunk(X, d_model, BLOCK_K)
            rstd = _rstd(X, x_first, d_model, eps, BLOCK_K)
            gate = _product(w_gate_up, offs_n, row_ok, gate_first, X, x_first, ffn_norm, d_model, rstd, True, BLOCK_K)
            up = _product(w_gate_up, d_ff + offs_n, row_ok, up_first, X, x_first, ffn_norm, d_model, rstd, True,
                          BLOCK_K)
            gate = gate.to(DTYPE).to(tl.float32)
            hidden = gate * tl.sigmoid(gate) * up.to(DTYPE).to(tl.float32)
            tl.store(HB + offs_n, hidden.to(DTYPE), mask=row_ok)
            _arrive(counts + KV + H + 2)
        # E: down projection rows + residual
        w_down = _pointer(TABLE, layer, 5, DTYPE)
        offset = (offset + n_d) % programs
        first = _first_task(pid, offset, programs)
        for task in range(first, n_c, programs):
            offs_n = task * BLOCK_N + rows
            row_ok = offs_n < d_model
            w_first = _weights(w_down, offs_n, row_ok, d_ff, 0, BLOCK_F)
            if task == first:
                _wait(counts + KV + H + 2, n_d, TIMEOUTS, MAX_SPINS)
            acc = _product(w_down, offs_n, row_ok, w_first, HB, _first_chunk(HB, d_ff, BLOCK_F), HB, d_ff, 0.0, False,
                           BLOCK_F)
            _add_residual(acc, X, offs_n, row_ok)
            _arrive(counts + KV + H + 3)
        offset = (offset + n_c) % programs
    # the program finishing last zeroes the counters for the next launch (no program waits on them any more)
    n_counts = n_layers * PER_LAYER
    if _arrive(COUNTS + n_counts) == programs - 1:
        for start in range(0, n_counts + 1, 1024):
            offs = start + tl.arange(0, 1024)
            tl.store(COUNTS + offs, tl.zeros((1024,), tl.int32), mask=offs <= n_counts)


def counters_per_layer(shapes: LayerShapes) -> int:
    return shapes.n_kv_heads + shapes.n_heads + 4


_counters: dict[torch.device, Tensor] = {}  # per device, zero between launches (see the module docstring)
_retired: list[Tensor] = []  # smaller counter buffers that captured CUDA graphs may still use
_timeouts: dict[torch.device, Tensor] = {}


def _device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    return torch.device("cuda", torch.cuda.current_device()) if device.type == "cuda" and device.index is None else device


def counters(device: torch.device | str) -> Tensor | None:
    """The device's counters (all zero between launches), None before the first launch there."""
    return _counters.get(_device(device))


def _counter_buffer(device: torch.device, size: int) -> Tensor:
    buffer = _counters.get(device)
    if buffer is None or buffer.numel() < size:
        if buffer is not None:
            _retired.append(buffer)
        buffer = _counters[device] = torch.zeros(max(size, 1024), dtype=torch.int32, device=device)
        _timeouts.setdefault(device, torch.zeros(1, dtype=torch.int32, device=device))
    return buffer


def timeouts(device: torch.device | str) -> int:
    """Waits that gave up on this device since the process started (0 unless something is wrong)."""
    found = _timeouts.get(_device(device))
    return 0 if found is None else int(found.item())


def programs(device: torch.device) -> int:
    """One program per SM (all resident at once); one under the interpreter, which runs programs in turn."""
    if NUM_WARPS * PROGRAMS_PER_SM > 8:
        raise ValueError(f"NUM_WARPS x PROGRAMS_PER_SM must be <= 8 (all programs resident), got {NUM_WARPS} x "
                         f"{PROGRAMS_PER_SM}")
    return 1 if device.type != "cuda" else PROGRAMS_PER_SM * kernels.sm_count(device)


def splits(n_heads: int, n_programs: int) -> int:
    """Splits of attention's key slots a head: a power of two (the combination's tile) near programs / heads."""
    return 1 << max(0, (n_programs // n_heads).bit_length() - 1)


def check(x: Tensor, position: Tensor, table: Tensor, cos: Tensor, sin: Tensor, shapes: LayerShapes,
          cache_strides: tuple[int, int]) -> None:
    kernels.check_device(INTERPRETED, x, position, table, cos, sin)
    kernels.check_dtype("x", x.dtype)
    d, half = shapes.head_dim, shapes.head_dim // 2
    if x.numel() != shapes.d_model or not x.is_contiguous():
        raise ValueError(f"x must be one contiguous row of d_model = {shapes.d_model}, got {tuple(x.shape)}")
    if position.dtype != torch.long or position.numel() != 1:
        raise ValueError(f"position must hold one long, got {position.dtype} {tuple(position.shape)}")
    if table.dtype != torch.int64 or table.shape != (shapes.n_layers, len(POINTERS)):
        raise ValueError(f"table must be int64 ({shapes.n_layers}, {len(POINTERS)}), got {table.dtype} "
                         f"{tuple(table.shape)}")
    if d & (d - 1) or not 16 <= d <= 256 or shapes.n_heads % shapes.n_kv_heads or d % BLOCK_N:
        raise ValueError(f"head_dim must be a power of two in [16, 256] and n_heads a multiple of n_kv_heads, "
                         f"got head_dim {d}, {shapes.n_heads} / {shapes.n_kv_heads} heads")
    if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[1] != half:
        raise ValueError(f"cos and sin must be (max_len, {half}), got {tuple(cos.shape)}, {tuple(sin.shape)}")
    if min(cache_strides) < 1:
        raise ValueError(f"cache strides (head, slot) must be positive, got {cache_strides}")


def decode_layers(x: Tensor, position: Tensor, table: Tensor, cos: Tensor, sin: Tensor, shapes: LayerShapes,
                  cache_strides: tuple[int, int]) -> Tensor:
    """Run every layer of one decode row: x (d_model,) the row's embedding, becomes the residual stream after
    the last layer (in place; returned). position (1,) long. table (n_layers, 8) int64: per layer the
    addresses of POINTERS: attention's RMSNorm weight (d_model,), the stacked QKV projection ((H + 2 KV) D,
    d_model), the output projection (d_model, H D), the FFN's RMSNorm weight, the stacked gate/up projection
    (2 d_ff, d_model), the down projection (d_model, d_ff), all contiguous and of x's dtype, and the row's
    key and value cache (KV, S, D) (slot 0 of the layer's cache, x's dtype, strides `cache_strides` = (head,
    slot), contiguous in D). cos, sin: RoPE's tables (max_len, D / 2). The caller keeps the addresses valid."""
    check(x, position, table, cos, sin, shapes, cache_strides)
    device, n_heads, head_dim = _device(x.device), shapes.n_heads, shapes.head_dim
    n_programs = programs(device)
    n_splits = splits(n_heads, n_programs)
    counts = _counter_buffer(device, shapes.n_layers * counters_per_layer(shapes) + 1)
    scratch = lambda *shape, dtype=x.dtype: kernels.output_buffer(shape, dtype, device)  # noqa: E731
    partial_m, partial_l = scratch(n_heads, n_splits, dtype=torch.float32), scratch(n_heads, n_splits, dtype=torch.float32)
    pdl = kernels.pdl_options(x)
    _decode_layers_kernel[(n_programs,)](
        x, position, table, cos, sin, scratch(n_heads * head_dim), scratch(n_heads * head_dim), scratch(shapes.d_ff),
        partial_m, partial_l, scratch(n_heads, n_splits, head_dim, dtype=torch.float32), counts, _timeouts[device],
        shapes.n_layers, shapes.d_model, shapes.d_ff, *cache_strides, shapes.sliding_window or 0, shapes.eps,
        1.4426950408889634 / head_dim**0.5, H=n_heads, KV=shapes.n_kv_heads, HALF=head_dim // 2, SPLITS=n_splits,
        BLOCK_N=BLOCK_N, BLOCK_K=min(MAX_BLOCK_K, triton.next_power_of_2(max(shapes.d_model, n_heads * head_dim))),
        BLOCK_F=min(MAX_BLOCK_K, triton.next_power_of_2(shapes.d_ff)),
        BLOCK_S=32 if head_dim <= 64 else 16, MAX_SPINS=MAX_SPINS, PDL=bool(pdl), num_warps=NUM_WARPS, **pdl)
    return x
