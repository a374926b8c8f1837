"""Our Triton kernels against PyTorch on one GPU: FlashAttention-2 and RMSNorm, bf16.

    PYTHONPATH=src python benchmarks/kernels.py            # full run (~3-4 min on an H100, first run compiles)
    PYTHONPATH=src python benchmarks/kernels.py --quick    # ~30 s smoke run (once Triton's cache holds the kernels)

Attention (batch x seq = 16,384 tokens, d_model 1024 = heads x head dim, MHA, T = S): ours
(scratchlm.kernels.flash_attention) vs F.scaled_dot_product_attention restricted to its FLASH_ATTENTION backend
vs naive attention (scratchlm.model.attention.scaled_dot_product_attention: the full score matrix in float32;
skipped where it would not fit). Forward, backward (from a kept graph) and forward+backward, causal and not, head
dims 64 and 128, seq 128..16,384. FLOPs: 4 B H T S D forward (two matmuls), 2.5x that backward (five matmuls),
half of each under the causal mask; TFLOP/s = FLOPs / time. Floors per shape: FLOPs / the dense bf16 matmul peak
(989 TFLOP/s on an H100 SXM) and the minimal HBM bytes (each input read once, each output written once) / the
measured copy bandwidth; the larger of the two is the floor, "vs floor" is time / floor.
Plus the course target: batch 1, seq 16,384, d_model 1024, 16 heads, causal forward+backward below 5.36 ms.

RMSNorm forward+backward (rows x d_model, bf16 x and weight): ours vs the model's eager RMSNorm (autograd) and
vs torch.compile of it. Achieved bandwidth = minimal bytes (forward: read x, write y; backward: read x and dy,
write dx) / time, against the device-to-device copy bandwidth (copy of a 1 GiB tensor, bytes read + written).

Timing: triton.testing.do_bench (CUDA events, L2 flushed between runs), median. RMSNorm forward+backward is also
timed as GPU time alone: `torch.autograd.grad` of each implementation captured ten times in a CUDA graph and
replayed (`scratchlm.profiling.graph_seconds`): no Python, no allocator, steady from run to run (the do_bench
number of the same code moved by 60% between two runs). Kernel autotuning happens on the first call of each
shape, before timing. Writes benchmarks/results/kernels.{json,md} (kernels_quick.* with --quick),
atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scratchlm.atomic import write_text_atomic  # noqa: E402
from scratchlm.kernels.flash_attention import flash_attention  # noqa: E402
from scratchlm.kernels.rmsnorm import rms_norm  # noqa: E402
from scratchlm.model import RMSNorm, causal_mask, scaled_dot_product_attention  # noqa: E402
from scratchlm.profiling import copy_bandwidth, graph_seconds  # noqa: E402
from scratchlm.run_info import run_info  # noqa: E402
from scratchlm.train.metrics import peak_flops  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TOKENS = 16_384  # batch x seq for the attention sweep
D_MODEL = 1024
H100_BF16_PEAK = 989e12  # dense bf16 tensor-core FLOP/s, H100 SXM (NVIDIA datasheet), used if the device is unknown
NAIVE_MAX_SCORE_BYTES = 4.5e9  # naive attention materialises float32 scores (and ~4 more of that size in backward)
TARGET = dict(batch=1, seq=16_384, heads=16, head_dim=64, causal=True, ms=5.36)
MODES = ("fwd", "bwd", "fwd+bwd")
IMPLS = ("ours", "sdpa_flash", "naive")


def bench_ms(fn: Callable[[], object], grads: list[torch.Tensor], rep: int) -> float:
    return triton.testing.do_bench(fn, warmup=max(5, rep // 4), rep=rep, grad_to_none=grads, return_mode="median")


# -- attention --------------------------------------------------------------------------------------


def attention_impls(causal: bool) -> dict[str, Callable]:
    def sdpa(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def naive(q, k, v):
        mask = causal_mask(q.shape[2], k.shape[2], device=q.device) if causal else None
        return scaled_dot_product_attention(q, k, v, mask)

    return {"ours": lambda q, k, v: flash_attention(q, k, v, causal), "sdpa_flash": sdpa, "naive": naive}


def attention_flops(b: int, h: int, t: int, d: int, causal: bool) -> dict[str, float]:
    fwd = 4 * b * h * t * t * d * (0.5 if causal else 1.0)
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}


def attention_bytes(b: int, h: int, t: int, d: int) -> dict[str, float]:
    """Minimal HBM traffic in bf16: forward reads q, k, v and writes o (+ float32 logsumexp); backward reads
    q, k, v, o, dO (+ logsumexp) and writes dq, dk, dv."""
    x = b * h * t * d * 2
    rows = b * h * t * 4
    fwd, bwd = 4 * x + rows, 8 * x + rows
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}


def time_attention(fn: Callable, q, k, v, rep: int) -> dict[str, float]:
    do = torch.randn_like(q)
    kept = fn(q, k, v)  # one graph, reused by the backward-only timing

    def fwd_bwd():
        fn(q, k, v).backward(do)

    return {"fwd": bench_ms(lambda: fn(q, k, v), [q, k, v], rep),
            "bwd": bench_ms(lambda: kept.backward(do, retain_graph=True), [q, k, v], rep),
            "fwd+bwd": bench_ms(fwd_bwd, [q, k, v], rep)}


def attention_row(b: int, t: int, d: int, causal: bool, rep: int, copy_bw: float, peak: float) -> dict:
    h = D_MODEL // d
    make = lambda: torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)  # noqa: E731
    q, k, v = make(), make(), make()
    impls = attention_impls(causal)
    with torch.no_grad():
        max_diff = (impls["ours"](q, k, v).float() - impls["sdpa_flash"](q, k, v).float()).abs().max().item()
    flops, nbytes = attention_flops(b, h, t, d, causal), attention_bytes(b, h, t, d)
    row = {"batch": b, "seq": t, "heads": h, "head_dim": d, "causal": causal, "max_abs_diff_vs_sdpa": max_diff,
           "flops": flops, "bytes": nbytes,
           "floor_ms": {m: 1e3 * max(flops[m] / peak, nbytes[m] / copy_bw) for m in MODES}}
    for name, fn in impls.items():
        if name == "naive" and b * h * t * t * 4 > NAIVE_MAX_SCORE_BYTES:
            row[name] = None
            continue
        try:
            ms = time_attention(fn, q, k, v, rep)
        except torch.cuda.OutOfMemoryError:
            if name != "naive":
                raise
            row[name] = None  # the memory limit above was not conservative enough for this device
        else:
            row[name] = {m: {"ms": ms[m], "tflops": flops[m] / (ms[m] * 1e-3) / 1e12} for m in MODES}
        torch.cuda.empty_cache()
    row["speedup_vs_sdpa"] = {m: row["sdpa_flash"][m]["ms"] / row["ours"][m]["ms"] for m in MODES}
    row["ours_vs_floor"] = {m: row["ours"][m]["ms"] / row["floor_ms"][m] for m in MODES}
    return row


# -- RMSNorm ----------------------------------------------------------------------------------------


def rmsnorm_row(rows: int, d: int, rep: int, copy_bw: float) -> dict:
    x = torch.randn(rows, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)
    eager = RMSNorm(d, device="cuda", dtype=torch.bfloat16, backend="torch")
    with torch.no_grad():
        eager.weight.normal_(1.0, 0.1)
    compiled = torch.compile(eager)
    impls = {"ours": lambda: rms_norm(x, eager.weight, eager.eps), "eager": lambda: eager(x), "compile": lambda: compiled(x)}
    with torch.no_grad():
        max_diff = (impls["ours"]().float() - impls["eager"]().float()).abs().max().item()
    nbytes = {"fwd": 2 * rows * d * 2, "fwd+bwd": 5 * rows * d * 2}
    row = {"rows": rows, "d_model": d, "bytes": nbytes, "max_abs_diff_vs_eager": max_diff,
           "floor_ms": {m: 1e3 * nbytes[m] / copy_bw for m in nbytes}}
    grads = [x, eager.weight]
    for name, fn in impls.items():
        fwd = bench_ms(fn, grads, rep)
        fwd_bwd = bench_ms(lambda fn=fn: fn().backward(dy), grads, rep)
        # the same work replayed from a CUDA graph: GPU time only (no Python, no allocator), steady across runs
        graph = 1e3 * graph_seconds([lambda fn=fn: torch.autograd.grad(fn(), grads, dy)] * 10)
        row[name] = {m: {"ms": ms, "bandwidth_gbs": nbytes[m.split()[0]] / (ms * 1e-3) / 1e9,
                         "of_copy_bandwidth": nbytes[m.split()[0]] / (ms * 1e-3) / copy_bw}
                     for m, ms in (("fwd", fwd), ("fwd+bwd", fwd_bwd), ("fwd+bwd graph", graph))}
    for mode in ("fwd+bwd", "fwd+bwd graph"):
        suffix = "" if mode == "fwd+bwd" else "_graph"
        row[f"speedup_vs_eager{suffix}"] = row["eager"][mode]["ms"] / row["ours"][mode]["ms"]
        row[f"speedup_vs_compile{suffix}"] = row["compile"][mode]["ms"] / row["ours"][mode]["ms"]
    return row


# -- report -----------------------------------------------------------------------------------------


def fmt_ms(cell: dict | None, mode: str) -> str:
    return "-" if cell is None else f"{cell[mode]['ms']:.3f} ({cell[mode]['tflops']:.0f})"


def markdown(report: dict) -> str:
    lines = [f"# Kernel benchmarks ({report['device']})", "",
             f"torch {report['torch']}, triton {report['triton']}, bf16; copy bandwidth "
             f"{report['copy_bandwidth_gbs']:,.0f} GB/s (measured), matmul peak {report['peak_tflops']:.0f} TFLOP/s; "
             "median of triton.testing.do_bench.", "",
             "## FlashAttention-2 (batch x seq = 16,384 tokens, d_model 1024)", "",
             "Cells: ms (TFLOP/s). speedup = SDPA-flash time / ours; floor = max(FLOPs / peak, bytes / copy bandwidth).", ""]
    for mode in MODES:
        lines += [f"### {mode}", "", "| causal | D | batch x seq | ours | SDPA flash | naive | speedup | ours / floor |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in report["attention"]:
            lines.append(f"| {'yes' if r['causal'] else 'no'} | {r['head_dim']} | {r['batch']} x {r['seq']} | "
                         f"{fmt_ms(r['ours'], mode)} | {fmt_ms(r['sdpa_flash'], mode)} | {fmt_ms(r['naive'], mode)} | "
                         f"{r['speedup_vs_sdpa'][mode]:.2f}x | {r['ours_vs_floor'][mode]:.2f}x |")
        lines.append("")
    t = report["target"]
    if t is not None:
        lines += ["## Target: batch 1, seq 16,384, d_model 1024, 16 heads, causal, forward+backward", "",
                  f"ours {t['ours_ms']:.3f} ms vs target {t['target_ms']} ms ({'met' if t['met'] else 'NOT met'}); "
                  f"SDPA flash {t['sdpa_flash_ms']:.3f} ms.", ""]
    for mode, title in (("fwd+bwd graph", "GPU time: forward + backward (autograd.grad) replayed from a CUDA graph"),
                        ("fwd+bwd", "Through Python: forward, then .backward(), each call timed by do_bench")):
        suffix = "_graph" if mode.endswith("graph") else ""
        lines += [f"## RMSNorm forward+backward (bf16), {title}", "",
                  "Cells: ms (share of copy bandwidth). Bytes: forward x + y, backward x + dy + dx.", "",
                  "| rows x d_model | ours | eager | torch.compile | vs eager | vs compile | floor ms |",
                  "|---|---|---|---|---|---|---|"]
        for r in report["rmsnorm"]:
            if mode not in r["ours"]:  # results written before the graph timing existed
                continue
            cells = " | ".join(f"{r[n][mode]['ms']:.3f} ({r[n][mode]['of_copy_bandwidth']:.0%})"
                               for n in ("ours", "eager", "compile"))
            lines.append(f"| {r['rows']} x {r['d_model']} | {cells} | {r['speedup_vs_eager' + suffix]:.2f}x | "
                         f"{r['speedup_vs_compile' + suffix]:.2f}x | {r['floor_ms']['fwd+bwd']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: causal, head dim 64, seq 1024 and 4096 and the target shape, one RMSNorm shape")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for kernels.json and kernels.md")
    parser.add_argument("--parts", default="attention,rmsnorm",
                        help="comma-separated: attention, rmsnorm (one part alone writes kernels_<part>.*)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/kernels.py needs a CUDA device")
    torch.manual_seed(0)
    rep = 25 if args.quick else 60
    seqs = [1024, 4096] if args.quick else [128, 512, 1024, 2048, 4096, 8192, 16384]
    head_dims = [64] if args.quick else [64, 128]
    norm_shapes = [(16384, 1024)] if args.quick else [(8192, 768), (16384, 1024), (32768, 4096)]
    device = torch.device("cuda")
    peak = peak_flops(device, torch.bfloat16) or H100_BF16_PEAK
    copy_bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}: copy {copy_bw / 1e9:,.0f} GB/s, peak {peak / 1e12:.0f} TFLOP/s", flush=True)

    parts = set(args.parts.split(","))
    if not parts or parts - {"attention", "rmsnorm"}:
        raise SystemExit(f"--parts takes attention and/or rmsnorm, got {args.parts!r}")
    attention = []
    if "attention" not in parts:
        seqs, head_dims = [], []
    print(f"{'causal':>6} {'D':>4} {'BxT':>10} | " + " | ".join(f"{m:^27}" for m in MODES) + "   (ms: ours / sdpa, ratio)")
    for d in head_dims:
        for causal in (True,) if args.quick else (True, False):
            for t in seqs:
                r = attention_row(max(1, TOKENS // t), t, d, causal, rep, copy_bw, peak)
                attention.append(r)
                cells = [f"{r['ours'][m]['ms']:8.3f} / {r['sdpa_flash'][m]['ms']:8.3f} {r['speedup_vs_sdpa'][m]:5.2f}x"
                         for m in MODES]
                print(f"{causal!s:>6} {d:>4} {r['batch']:>4}x{t:<5} | " + " | ".join(cells), flush=True)

    target_summary = None
    if "attention" in parts:
        target = next((r for r in attention if r["batch"] == TARGET["batch"] and r["seq"] == TARGET["seq"]
                       and r["head_dim"] == TARGET["head_dim"] and r["causal"]), None)
        if target is None:
            target = attention_row(TARGET["batch"], TARGET["seq"], TARGET["head_dim"], True, rep, copy_bw, peak)
        target_summary = {"ours_ms": target["ours"]["fwd+bwd"]["ms"],
                          "sdpa_flash_ms": target["sdpa_flash"]["fwd+bwd"]["ms"],
                          "target_ms": TARGET["ms"], "met": target["ours"]["fwd+bwd"]["ms"] < TARGET["ms"]}
        print(f"target shape (1 x 16384, 16 heads, D 64, causal) fwd+bwd: ours {target_summary['ours_ms']:.3f} ms, "
              f"SDPA {target_summary['sdpa_flash_ms']:.3f} ms, target {TARGET['ms']} ms", flush=True)

    rmsnorm = []
    for rows, d in norm_shapes if "rmsnorm" in parts else []:
        r = rmsnorm_row(rows, d, rep, copy_bw)
        rmsnorm.append(r)
        for mode in ("fwd+bwd", "fwd+bwd graph"):
            print(f"rmsnorm {rows}x{d} {mode}: ours {r['ours'][mode]['ms']:.3f} ms "
                  f"({r['ours'][mode]['of_copy_bandwidth']:.0%} of copy bw), eager {r['eager'][mode]['ms']:.3f}, "
                  f"compile {r['compile'][mode]['ms']:.3f} ms", flush=True)

    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "quick": args.quick, "copy_bandwidth_gbs": copy_bw / 1e9, "peak_tflops": peak / 1e12,
              "attention": attention, "target": target_summary, "rmsnorm": rmsnorm, "run_info": run_info()}
    name = "kernels_quick" if args.quick else "kernels" if len(parts) == 2 else f"kernels_{parts.pop()}"
    write_text_atomic(args.out / f"{name}.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(args.out / f"{name}.md", markdown(report))
    print(f"wrote {args.out / name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
