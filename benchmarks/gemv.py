"""One row times a weight matrix, ours (scratchlm.kernels.gemv) vs cuBLAS (torch.matmul), on the matrices of
batch-1 decoding: the q/k/v, output, gate/up, down and LM-head projections of gpt2-small-124m, gpt-350m and
gpt-1.3b, bf16; and 2, 5, 8, 16 rows (a speculative verification pass, small batches), our several-row kernel
(`gemv_rows`) vs cuBLAS.

    PYTHONPATH=src python benchmarks/gemv.py            # ~2 min on an H100 (the sweep compiles ~100 variants)
    PYTHONPATH=src python benchmarks/gemv.py --no-sweep # default tiles only

A decode step reads each matrix once, after the rest of the model went through L2, so every timing here is
cold: each call reads a different copy of the matrix (copies totalling > 4x the L2 size), and the calls are
replayed as one CUDA graph (decoding replays graphs: launch overhead excluded, per-kernel latency included).
Achieved bandwidth = matrix bytes / time, against the device-to-device copy bandwidth (bytes read + written /
time for 1 GiB). `--sweep` times every (BLOCK_N, BLOCK_K, warps, stages) in a grid and reports the best
beside the default choice (`scratchlm.kernels.gemv.config`; a model's decode step may get another rule:
`scratchlm.inference.tuning`).
Writes benchmarks/results/gemv.{json,md} atomically.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scratchlm.atomic import write_text_atomic  # noqa: E402
from scratchlm.config import build_config  # noqa: E402
from scratchlm.kernels import gemv as gv  # noqa: E402
from scratchlm.model import ModelConfig  # noqa: E402
from scratchlm.profiling import copy_bandwidth, graph_seconds  # noqa: E402
from scratchlm.run_info import run_info  # noqa: E402
from scratchlm.train import TrainConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PRESETS = ("gpt2-small-124m", "gpt-350m", "gpt-1.3b")
SWEEP = dict(block_n=(1, 2, 4, 8, 16, 32), tile=(2048, 4096, 8192, 16384), warps=(2, 4, 8), stages=(1, 3))
SEVERAL_ROWS = (2, 5, 8, 16)


def projections(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """(N, K) of each matrix a decode step reads (one layer's four and the LM head)."""
    q_dim, kv_dim = config.n_heads * config.head_dim, config.kv_heads * config.head_dim
    return {"qkv": (q_dim + 2 * kv_dim, config.d_model), "o": (config.d_model, q_dim),
            "gate_up": (2 * config.ffn_dim, config.d_model), "down": (config.d_model, config.ffn_dim),
            "lm_head": (config.vocab_size, config.d_model)}


def sweep_configs(k: int) -> list[tuple[int, int, int, int]]:
    configs = []
    for block_n, tile, warps, stages in itertools.product(*SWEEP.values()):
        block_k = min(tile // block_n, 8192, max(16, 1 << (k - 1).bit_length()))
        if (block_n, block_k, warps, stages) not in configs:
            configs.append((block_n, block_k, warps, stages))
    return configs


def bench_matrix(n: int, k: int, l2_bytes: int, sweep: bool, replays: int) -> dict:
    nbytes = n * k * 2
    copies = max(8, -(-4 * l2_bytes // nbytes))
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5 for _ in range(copies)]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    ref = (x.double() @ weights[0].double().T)
    row = {"n": n, "k": k, "mb": nbytes / 1e6}

    def timed(fn: Callable[[torch.Tensor], torch.Tensor]) -> float:
        error = (fn(weights[0]).double() - ref).abs().max().item() / ref.abs().max().item()
        if not error < 2e-2:
            raise AssertionError(f"{n}x{k}: relative error {error}")
        return graph_seconds([lambda w=w: fn(w) for w in weights], replays)

    row["cublas_us"] = timed(lambda w: x @ w.T) * 1e6
    row["ours_us"] = timed(lambda w: gv.gemv(x, w)) * 1e6
    row["default"] = list(gv.config(n, k))
    if sweep:
        results = {config: timed(lambda w, c=config: gv.launch(x, w, tiles=c)) * 1e6 for config in sweep_configs(k)}
        best = min(results, key=results.get)
        row["best_us"], row["best"] = results[best], list(best)
    row["several_rows"] = {}
    for rows in SEVERAL_ROWS:  # `timed` checks against `ref`: rebound to these rows' product
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        ref = x.double() @ weights[0].double().T
        row["several_rows"][rows] = {"cublas_us": timed(lambda w, x=x: x @ w.T) * 1e6,
                                     "ours_us": timed(lambda w, x=x: gv.gemv_rows(x, w)) * 1e6}
    return row


def markdown(report: dict) -> str:
    bw = report["copy_bandwidth"]
    lines = ["# One-row GEMV: ours vs cuBLAS (bf16, cold L2, in a CUDA graph)", "",
             f"Copy bandwidth {bw / 1e9:,.0f} GB/s; % = matrix bytes / time / copy bandwidth. "
             "Best: fastest (BLOCK_N, BLOCK_K, warps, stages) of the sweep.", "",
             "| preset | matrix | N x K | MB | cuBLAS us (%) | ours us (%) | ours/cuBLAS | best us (%) | best config |",
             "|---|---|---|---|---|---|---|---|---|"]

    def pct(us: float, mb: float) -> str:
        return f"{us:.1f} ({mb * 1e6 / (us * 1e-6) / bw * 100:.0f}%)"

    for r in report["rows"]:
        best = (pct(r["best_us"], r["mb"]), str(tuple(r["best"]))) if "best_us" in r else ("-", "-")
        lines.append(f"| {r['preset']} | {r['matrix']} | {r['n']} x {r['k']} | {r['mb']:.1f} | "
                     f"{pct(r['cublas_us'], r['mb'])} | {pct(r['ours_us'], r['mb'])} | "
                     f"{r['cublas_us'] / r['ours_us']:.2f}x | {best[0]} | {best[1]} |")
    lines += ["", "Several rows: cuBLAS us / ours us (`gemv_rows`, tensor cores), ours vs cuBLAS.", "",
              "| preset | matrix | MB | " + " | ".join(f"{m} rows" for m in SEVERAL_ROWS) + " |",
              "|---|---|---|" + "---|" * len(SEVERAL_ROWS)]
    for r in report["rows"]:
        cells = [f"{t['cublas_us']:.1f} / {t['ours_us']:.1f} ({t['cublas_us'] / t['ours_us']:.2f}x)"
                 for t in (r["several_rows"][m] for m in SEVERAL_ROWS)]
        lines.append(f"| {r['preset']} | {r['matrix']} | {r['mb']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--replays", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gemv.py needs a CUDA GPU")
    l2_bytes = torch.cuda.get_device_properties(0).L2_cache_size
    report = {"copy_bandwidth": copy_bandwidth(), "l2_bytes": l2_bytes, "rows": [], "run_info": run_info()}
    name = "gemv" if not args.no_sweep else "gemv_default"
    for preset in args.presets.split(","):
        for matrix, (n, k) in projections(build_config(TrainConfig, f"train/{preset}").model).items():
            row = {"preset": preset, "matrix": matrix, **bench_matrix(n, k, l2_bytes, not args.no_sweep, args.replays)}
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
            write_text_atomic(RESULTS / f"{name}.json", json.dumps(report, indent=1))
            write_text_atomic(RESULTS / f"{name}.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
