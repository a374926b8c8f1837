"""Attention of a decode step, ours (scratchlm.kernels.decode_attention) vs PyTorch SDPA, bf16, on the head
shapes of gpt2-small-124m (12 x 64), gpt-350m (16 x 64) and gpt-1.3b (16 x 128).

    PYTHONPATH=src python benchmarks/decode_attention.py            # ~1-2 min on an H100 (with the sweep)
    PYTHONPATH=src python benchmarks/decode_attention.py --no-sweep

One query per row against a KV cache of S slots, every row at position P (the slots past it are junk):
- ours: the whole cache and the rows' positions, as the model calls it;
- sdpa, masked: F.scaled_dot_product_attention over the whole cache with the rows' position mask (what the `sdpa`
  backend does: the cache's fill is known only on the GPU);
- sdpa, prefix: SDPA over the P + 1 filled slots without a mask, the peer that knows every row's length on
  the host (one length for all rows: a fair best case for it).
Cold and in a CUDA graph as decoding runs it (`scratchlm.profiling.graph_seconds`: each call reads its own
copy of the cache). Bytes = the filled K and V slots read once; % of the device copy bandwidth. `--sweep`
times (BLOCK_N, warps, PROGRAMS_PER_SM) variants of ours beside the defaults. Writes
benchmarks/results/decode_attention.{json,md} atomically.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scratchlm.atomic import write_text_atomic  # noqa: E402
from scratchlm.kernels import decode_attention as da  # noqa: E402
from scratchlm.model.attention import position_mask  # noqa: E402
from scratchlm.profiling import copy_bandwidth, graph_seconds  # noqa: E402
from scratchlm.run_info import run_info  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
HEADS = {"gpt2-small-124m": (12, 64), "gpt-350m": (16, 64), "gpt-1.3b": (16, 128)}
# (batch, cache slots, position)
CASES = [(1, 256, 191), (1, 2048, 1535), (8, 2048, 1535), (32, 1024, 767)]
SWEEP = dict(block_n=(16, 32, 64, 128), warps=(2, 4, 8), programs_per_sm=(2, 4, 8))


def bench_case(heads: int, head_dim: int, batch: int, slots: int, position: int, l2_bytes: int, sweep: bool) -> dict:
    cache_bytes = 2 * batch * heads * slots * head_dim * 2
    copies = max(8, -(-4 * l2_bytes // cache_bytes))
    q = torch.randn(batch, heads, 1, head_dim, device="cuda", dtype=torch.bfloat16)
    caches = [(torch.randn(batch, heads, slots, head_dim, device="cuda", dtype=torch.bfloat16),
               torch.randn(batch, heads, slots, head_dim, device="cuda", dtype=torch.bfloat16)) for _ in range(copies)]
    positions = torch.full((batch,), position, device="cuda")
    mask = position_mask(positions[:, None], slots)  # for SDPA
    k0, v0 = caches[0]
    ref = F.scaled_dot_product_attention(q.double(), k0[:, :, :position + 1].double(), v0[:, :, :position + 1].double())

    def timed(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
        error = (fn(k0, v0).double() - ref).abs().max().item() / ref.abs().max().item()
        if not error < 2e-2:
            raise AssertionError(f"relative error {error}")
        return graph_seconds([lambda k=k, v=v: fn(k, v) for k, v in caches]) * 1e6

    row = {"batch": batch, "slots": slots, "position": position,
           "mb": 2 * batch * heads * (position + 1) * head_dim * 2 / 1e6,
           "ours_us": timed(lambda k, v: da.decode_attention(q, k, v, positions)),
           "sdpa_masked_us": timed(lambda k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)),
           "sdpa_prefix_us": timed(lambda k, v: F.scaled_dot_product_attention(
               q, k[:, :, :position + 1], v[:, :, :position + 1]))}
    if sweep:
        results = {tiles: timed(lambda k, v, t=tiles: da.launch(q, k, v, da.query_positions(positions, 1), config=t))
                   for tiles in itertools.product(*SWEEP.values())}
        best = min(results, key=results.get)
        row["best_us"], row["best"] = results[best], list(best)
    return row


def markdown(report: dict) -> str:
    bw = report["copy_bandwidth"]
    lines = ["# Decode attention: ours vs SDPA (bf16, cold, in a CUDA graph)", "",
             f"Copy bandwidth {bw / 1e9:,.0f} GB/s; % = filled K and V bytes / time / copy bandwidth. "
             "Ours: the default tiles of the run (`scratchlm.kernels.decode_attention.tiles`); best: the fastest "
             "of the sweep.",
             "", "| model heads | batch | slots | position | MB read | ours us (%) | SDPA masked us | SDPA prefix us "
             "| ours vs masked | ours vs prefix | best us | best (BLOCK_N, warps, per SM) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        pct = r["mb"] * 1e6 / (r["ours_us"] * 1e-6) / bw * 100
        best = (f"{r['best_us']:.1f}", str(tuple(r["best"]))) if "best_us" in r else ("-", "-")
        lines.append(f"| {r['preset']} ({r['heads']} x {r['head_dim']}) | {r['batch']} | {r['slots']} | "
                     f"{r['position']} | {r['mb']:.1f} | {r['ours_us']:.1f} ({pct:.0f}%) | {r['sdpa_masked_us']:.1f} | "
                     f"{r['sdpa_prefix_us']:.1f} | {r['sdpa_masked_us'] / r['ours_us']:.2f}x | "
                     f"{r['sdpa_prefix_us'] / r['ours_us']:.2f}x | {best[0]} | {best[1]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/decode_attention.py needs a CUDA GPU")
    l2_bytes = torch.cuda.get_device_properties(0).L2_cache_size
    report = {"copy_bandwidth": copy_bandwidth(), "rows": [], "run_info": run_info()}
    for (preset, (heads, head_dim)), (batch, slots, position) in itertools.product(HEADS.items(), CASES):
        row = {"preset": preset, "heads": heads, "head_dim": head_dim,
               **bench_case(heads, head_dim, batch, slots, position, l2_bytes, not args.no_sweep)}
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        write_text_atomic(RESULTS / "decode_attention.json", json.dumps(report, indent=1))
        write_text_atomic(RESULTS / "decode_attention.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
