"""The Triton decode-attention kernel against a float64 masked softmax attention: rows at different positions of
a cache with junk past them (and before their window), GQA, sliding windows, a batch-shared position, both head
dims, several queries per row (speculative verification); launcher errors.
CPU: Triton's interpreter (blocks of 16 to 128 key slots, so caches of 33-130 slots cross blocks and leave some
fully masked blocks to skip), with the key slots in one split and in as many splits as there are blocks."""

from __future__ import annotations

import math

import pytest
import torch

from tests.kernels.common import DEVICE, TOLERANCES, require_triton
from tests.model.reference import assert_close_scaled

require_triton()

from scratchlm.kernels import decode_attention as da  # noqa: E402
from scratchlm.kernels.decode_attention import decode_attention  # noqa: E402
from scratchlm.model.attention import position_mask  # noqa: E402


def float64_attention(q, k, v, mask):
    """Softmax attention in float64 with repeated k/v heads and the mask applied before the softmax."""
    group = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(group, dim=1), v.double().repeat_interleave(group, dim=1)
    scores = q.double() @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


def cache_rows(b, h, n_kv, s, d, dtype, positions, window=None, queries=1):
    """q (b, h, queries, d), a cache (b, n_kv, s, d) whose slots a row must not see (past its last query's
    position, before its first query's window) hold huge junk (a kernel that reads them is caught), the
    queries' positions ((b,) for one query a row, else (b, queries): the row's position and those before) and,
    for the reference, their position mask."""
    q = torch.randn(b, h, queries, d, dtype=torch.float64, device=DEVICE).to(dtype)
    k, v = (torch.randn(b, n_kv, s, d, dtype=torch.float64, device=DEVICE) for _ in range(2))
    for row, p in enumerate(positions):
        k[row, :, p + 1:], v[row, :, p + 1:] = 1e4, -1e4
        if window is not None:
            first = max(0, p - queries + 1 - window + 1)
            k[row, :, :first], v[row, :, :first] = 1e4, -1e4
    pos = torch.tensor(positions, device=DEVICE)
    pos = pos[:, None] + torch.arange(1 - queries, 1, device=DEVICE)  # (b, queries)
    return q, k.to(dtype), v.to(dtype), pos[:, 0] if queries == 1 else pos, position_mask(pos, s, window)


# (batch, heads, kv heads, cache slots, head dim, row positions, sliding window)
CASES = [
    (1, 1, 1, 70, 64, [0], None),  # the first token: one visible key
    (3, 4, 2, 130, 64, [5, 64, 129], None),  # a block edge, the last slot; GQA groups of 2
    (2, 4, 1, 100, 128, [99, 40], 16),  # sliding window: blocks before the window are skipped too
    (2, 2, 2, 33, 64, [10, 32], None),  # fewer slots than one block
]


@pytest.mark.parametrize("sms", [0, 1000], ids=["one split", "a split per block"])
@pytest.mark.parametrize(("b", "h", "n_kv", "s", "d", "positions", "window"), CASES, ids=str)
def test_decode_attention_matches_float64(monkeypatch, sms, b, h, n_kv, s, d, positions, window):
    """Split per block: splits that see no key (past the position, before the window) must weigh nothing."""
    monkeypatch.setattr(da.kernels, "sm_count", lambda device: sms)
    q, k, v, pos, mask = cache_rows(b, h, n_kv, s, d, torch.float32, positions, window)
    out = decode_attention(q, k, v, pos, window)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_close_scaled(out.double(), float64_attention(q, k, v, mask), "output", **TOLERANCES[torch.float32])


@pytest.mark.parametrize("config", [(32, 4, 1), (64, 2, 8)], ids=str)
def test_other_block_sizes(config):
    q, k, v, pos, mask = cache_rows(3, 4, 2, 130, 64, torch.float32, [5, 64, 129], window=70)
    assert_close_scaled(da.launch(q, k, v, da.query_positions(pos, 1), 70, config=config).double(), float64_attention(q, k, v, mask),
                        "output", **TOLERANCES[torch.float32])


def test_tiles_and_splits_fill_the_gpu_in_whole_blocks():
    assert da.tiles(1, 12, 256, 64, 132) == (16, 2, 4)  # batch 1: the smallest blocks
    assert da.tiles(1, 16, 2048, 128, 132) == (32, 2, 4)
    assert da.tiles(8, 12, 2048, 64, 132) == (128, 2, 4)
    assert da.tiles(8, 16, 2048, 128, 132) == (64, 2, 4)  # 64 x 128 = the largest tile
    assert da.splits(1, 12, 256, 132, 16, 4) == (16, 16)  # batch 1: a split per block
    assert da.splits(4, 16, 2048, 132, 64, 4) == (8, 256)  # 64 programs x 8 splits = 512 ~ 4 per SM
    assert da.splits(128, 12, 2048, 132, 64, 4) == (1, 2048)  # enough rows: one split, no combining kernel
    for b, h, s, d in [(1, 1, 70, 64), (3, 7, 1000, 128), (2, 2, 33, 64)]:
        block_n, _, per_sm = da.tiles(b, h, s, d, 132)
        n, length = da.splits(b, h, s, 132, block_n, per_sm)
        assert length % block_n == 0 and (n - 1) * length < s <= n * length


# (batch, heads, kv heads, cache slots, head dim, last query's position per row, queries a row, sliding window)
MULTI_QUERY_CASES = [
    (1, 4, 2, 130, 64, [68], 5, None),  # speculative verification: k + 1 queries across a block edge
    (2, 2, 1, 70, 64, [3, 69], 4, None),  # the first tokens, the last slot
    (2, 4, 4, 100, 128, [90, 40], 3, 16),  # sliding window
]


@pytest.mark.parametrize("sms", [0, 1000], ids=["one split", "a split per block"])
@pytest.mark.parametrize(("b", "h", "n_kv", "s", "d", "positions", "queries", "window"), MULTI_QUERY_CASES, ids=str)
def test_several_queries_per_row(monkeypatch, sms, b, h, n_kv, s, d, positions, queries, window):
    """Each query sees the slots up to its own position: the later queries of a row see the earlier ones' keys."""
    monkeypatch.setattr(da.kernels, "sm_count", lambda device: sms)
    q, k, v, pos, mask = cache_rows(b, h, n_kv, s, d, torch.float32, positions, window, queries)
    out = decode_attention(q, k, v, pos, window)
    assert out.shape == q.shape and out.transpose(1, 2).is_contiguous()  # (B, T, H, D) memory: no copy for o_proj
    assert_close_scaled(out.double(), float64_attention(q, k, v, mask), "output", **TOLERANCES[torch.float32])
    if b == 1:  # (T,) positions: the same for every row
        assert torch.equal(decode_attention(q, k, v, pos[0], window), out)


@pytest.mark.parametrize(("b", "h", "t", "d", "pdl"), [(1, 12, 1, 64, True), (8, 12, 1, 64, True), (32, 12, 1, 64, False),
                                                   (1, 16, 5, 128, True), (1, 16, 9, 128, False), (2, 16, 1, 128, False)])
def test_programmatic_dependent_launch_only_for_small_launches(monkeypatch, b, h, t, d, pdl):
    """Where the device offers it: one row and small batches of narrow heads (measured faster there), not wide
    launches (measured slower)."""
    monkeypatch.setattr(da.kernels, "pdl_options", lambda x: {"launch_pdl": True})
    assert da.launch_options(torch.empty(b, h, t, d)) == ({"launch_pdl": True} if pdl else {})


def test_one_position_shared_by_all_rows():
    """A (1,) position (every row at one position) broadcasts over the batch."""
    q, k, v, _, mask = cache_rows(3, 2, 1, 80, 64, torch.float32, [50, 50, 50])
    assert_close_scaled(decode_attention(q, k, v, torch.tensor([50], device=DEVICE)).double(),
                        float64_attention(q, k, v, mask), "output", **TOLERANCES[torch.float32])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_decode_attention_half_precision(dtype):
    q, k, v, pos, mask = cache_rows(2, 4, 2, 90, 64, dtype, [7, 89])
    out = decode_attention(q, k, v, pos)
    assert out.dtype == dtype
    assert_close_scaled(out.double(), float64_attention(q, k, v, mask), "output", **TOLERANCES[dtype])


def test_launcher_rejects_bad_inputs():
    q, k, v, pos, _ = cache_rows(2, 4, 2, 70, 64, torch.float32, [3, 4])
    with pytest.raises(ValueError, match="positions must be long"):
        decode_attention(torch.cat([q, q, q], dim=2), k, v, pos)  # 3 queries a row, 2 positions
    with pytest.raises(ValueError, match="KV dividing H"):
        decode_attention(q[:, :3], k, v, pos)
    with pytest.raises(ValueError, match="positions must be long"):
        decode_attention(q, k, v, pos.int())
    with pytest.raises(ValueError, match="positions must be long"):
        decode_attention(q, k, v, pos[None])
    with pytest.raises(ValueError, match="positions must be long"):
        decode_attention(q, k, v, torch.cat([pos, pos]))
    with pytest.raises(ValueError, match="sliding_window"):
        decode_attention(q, k, v, pos, 0)
    with pytest.raises(ValueError, match="power of two"):
        decode_attention(q[..., :48], k[..., :48], v[..., :48], pos)
    with pytest.raises(ValueError, match="share a dtype"):
        decode_attention(q.half(), k, v, pos)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
def test_decode_attention_gpu_bf16_long_cache(d):
    """Real sizes: 32 rows at scattered positions of a 2048-slot cache, GQA 4."""
    positions = torch.randint(0, 2048, (32,)).tolist()
    q, k, v, pos, mask = cache_rows(32, 16, 4, 2048, d, torch.bfloat16, positions)
    assert_close_scaled(decode_attention(q, k, v, pos).double(), float64_attention(q, k, v, mask), "output",
                        **TOLERANCES[torch.bfloat16])
