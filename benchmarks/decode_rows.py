"""Decoding several rows at once: our kernels around the matmuls vs the PyTorch operations they replace, bf16.

    PYTHONPATH=src python benchmarks/decode_rows.py            # ~2 min on an H100
    PYTHONPATH=src python benchmarks/decode_rows.py --presets gpt-1.3b --rows 2,5

Rows the one-row GEMV does not take (speculative verification's k + 1 positions, batched decoding) run their
projections on the GEMV's several-row kernel (up to 16 rows, `gemv_rows`, with SwiGLU's gate and RoPE + the
cache store as epilogues) or cuBLAS; past 16 rows the model runs RoPE + the cache store
(`scratchlm.kernels.rope_store`) and the SwiGLU gate (`scratchlm.kernels.swiglu`) as kernels of their own; for
any number of rows, attention against the cache (`scratchlm.kernels.decode_attention`, several queries a row)
and each residual add inside the norm after it (`scratchlm.kernels.rmsnorm`, `add_rms_norm`). Side by side in
one process, random weights of configs/train/<preset>, every row at position --position of a --slots cache,
GPU time in a CUDA graph (`scratchlm.profiling.graph_seconds`):
- a model forward of the rows through the cache, ours vs "torch ops" (the same model with those four kernels
  and the several-row GEMV off: PyTorch's rotation and indexed stores, silu(gate) * up, SDPA over the masked
  cache, each add then its norm, cuBLAS), for verification (batch 1, R queries at consecutive positions) and
  batched decoding (R rows of one query); beside it the one-row step (the GEMV path), so a verification pass
  reads as plain decode steps;
- each operation alone at the preset's shapes (cold: each call its own copy of the inputs).
Writes benchmarks/results/decode_rows.{json,md} atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scratchlm.atomic import write_text_atomic  # noqa: E402
from scratchlm.config import build_config  # noqa: E402
from scratchlm.inference.kv_cache import KVCache  # noqa: E402
from scratchlm.model import TransformerLM, attention, layers  # noqa: E402
from scratchlm.model.attention import position_mask  # noqa: E402
from scratchlm.model.rope import RotaryEmbedding  # noqa: E402
from scratchlm.profiling import graph_seconds  # noqa: E402
from scratchlm.run_info import run_info  # noqa: E402
from scratchlm.train import TrainConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DTYPE = torch.bfloat16


@contextmanager
def torch_ops() -> Iterator[None]:
    """The model without the several-row kernels: what it ran before them."""
    from scratchlm.kernels import flash_attention

    saved = (attention._rope_store, layers._swiglu, layers._add_rms_norm, flash_attention.MAX_DECODE_QUERIES,
             layers._gemv)
    one_row_gemv = None if layers._gemv is None else layers._gemv._replace(applies_rows=None)
    (attention._rope_store, layers._swiglu, layers._add_rms_norm, flash_attention.MAX_DECODE_QUERIES,
     layers._gemv) = None, None, None, 1, one_row_gemv
    try:
        yield
    finally:
        (attention._rope_store, layers._swiglu, layers._add_rms_norm, flash_attention.MAX_DECODE_QUERIES,
         layers._gemv) = saved


def us(calls: list[Callable[[], object]]) -> float:
    return graph_seconds(calls) * 1e6


def model_rows(model: TransformerLM, rows: list[int], slots: int, position: int) -> list[dict]:
    """Forward of R rows through the cache: verification (1 x R) and batched decoding (R x 1), ours vs torch ops."""
    config = model.config
    one_row = KVCache(config, 1, slots, device="cuda", dtype=DTYPE)
    token = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    one_position = torch.tensor([position], device="cuda")
    step_us = us([lambda: model(token, one_position, kv_cache=one_row)] * 3)
    out = []
    for r in rows:
        shapes = {"verification": (1, r, torch.arange(position, position + r, device="cuda")),
                  "batch": (r, 1, torch.full((r, 1), position, device="cuda"))}
        for layout, (b, t, positions) in shapes.items():
            cache = KVCache(config, b, slots, device="cuda", dtype=DTYPE)
            tokens = torch.randint(0, config.vocab_size, (b, t), device="cuda")
            forward = lambda tokens=tokens, positions=positions, cache=cache: model(tokens, positions, kv_cache=cache)  # noqa: E731
            ours = us([forward] * 3)
            with torch_ops():
                theirs = us([forward] * 3)
            out.append({"layout": layout, "rows": r, "ours_us": ours, "torch_ops_us": theirs, "one_row_us": step_us})
    return out


def op_rows(config, rows: int, slots: int, position: int, copies: int) -> list[dict]:  # noqa: ANN001
    """Each operation alone on `rows` queries of one sequence (verification's shape), cold."""
    from scratchlm.kernels.decode_attention import decode_attention
    from scratchlm.kernels.rmsnorm import add_rms_norm, rms_norm
    from scratchlm.kernels.rope_store import rope_store
    from scratchlm.kernels.swiglu import swiglu

    heads, kv_heads, head_dim = config.n_heads, config.kv_heads, config.head_dim
    rope = RotaryEmbedding(head_dim, config.context_length, config.rope_theta, device="cuda")
    positions = torch.arange(position, position + rows, device="cuda")
    new = lambda *shape: torch.randn(*shape, device="cuda", dtype=DTYPE)  # noqa: E731
    qkv = [new(1, rows, (heads + 2 * kv_heads) * head_dim) for _ in range(copies)]
    caches = [(new(1, kv_heads, slots, head_dim), new(1, kv_heads, slots, head_dim)) for _ in range(copies)]
    tables = rope.tables(positions, torch.float32)

    def torch_rope_store(x, k_cache, v_cache):  # noqa: ANN001, ANN202
        q, k, v = x.split((heads * head_dim, kv_heads * head_dim, kv_heads * head_dim), dim=-1)
        q = rope.rotate(q.view(1, rows, heads, head_dim).transpose(1, 2), tables)
        k = rope.rotate(k.view(1, rows, kv_heads, head_dim).transpose(1, 2), tables)
        k_cache[0, :, positions] = k[0].to(DTYPE)
        v_cache[0, :, positions] = v.view(rows, kv_heads, head_dim).transpose(0, 1)
        return q

    gate_up = [new(rows, 2 * config.ffn_dim) for _ in range(copies)]
    stream = [(new(rows, config.d_model), new(rows, config.d_model)) for _ in range(copies)]  # (output, residual)
    norm_weight = new(config.d_model)
    q = [new(1, heads, rows, head_dim) for _ in range(copies)]
    mask = position_mask(positions, slots)
    group = heads // kv_heads
    pairs = {
        "RoPE + cache store": (lambda i: rope_store(qkv[i], rope.cos, rope.sin, positions, *caches[i], heads),
                               lambda i: torch_rope_store(qkv[i], *caches[i])),
        "SwiGLU gate": (lambda i: swiglu(gate_up[i]),
                        lambda i: layers.silu(gate_up[i][:, :config.ffn_dim]) * gate_up[i][:, config.ffn_dim:]),
        "residual add + RMSNorm": (lambda i: add_rms_norm(*stream[i], norm_weight),
                                   lambda i: rms_norm(stream[i][1] + stream[i][0], norm_weight)),
        "attention": (lambda i: decode_attention(q[i], *caches[i], positions),
                      lambda i: F.scaled_dot_product_attention(q[i], *caches[i], attn_mask=mask, enable_gqa=group > 1)),
    }
    return [{"op": name, "rows": rows, "ours_us": us([lambda i=i, f=ours: f(i) for i in range(copies)]),
             "torch_us": us([lambda i=i, f=theirs: f(i) for i in range(copies)])}
            for name, (ours, theirs) in pairs.items()]


def markdown(report: dict) -> str:
    lines = ["# Decoding several rows: our kernels vs PyTorch operations (bf16, CUDA graph)", "",
             f"Cache of {report['slots']} slots, rows at position {report['position']}; random weights.", ""]
    for preset in report["presets"]:
        lines += [f"## {preset['preset']}", "", "| forward | rows | ours us (one-row steps) | torch ops us | ours vs torch ops |",
                  "|---|---|---|---|---|"]
        for r in preset["model"]:
            lines.append(f"| {r['layout']} | {r['rows']} | {r['ours_us']:,.0f} ({r['ours_us'] / r['one_row_us']:.2f}) | "
                         f"{r['torch_ops_us']:,.0f} | {r['torch_ops_us'] / r['ours_us']:.2f}x |")
        lines += ["", f"One-row step (GEMV path): {preset['model'][0]['one_row_us']:,.0f} us.", "",
                  "| operation (one layer, cold) | queries | ours us | PyTorch us | ours vs PyTorch |", "|---|---|---|---|---|"]
        for r in preset["ops"]:
            lines.append(f"| {r['op']} | {r['rows']} | {r['ours_us']:.1f} | {r['torch_us']:.1f} | "
                         f"{r['torch_us'] / r['ours_us']:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="gpt2-small-124m,gpt-1.3b", help="configs/train/<name> model shapes")
    parser.add_argument("--rows", type=lambda s: [int(x) for x in s.split(",")], default=[2, 5, 9])
    parser.add_argument("--slots", type=int, default=512)
    parser.add_argument("--position", type=int, default=256)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/decode_rows.py needs a CUDA GPU")
    if args.position < 0 or args.position + max(args.rows) > args.slots:
        sys.exit(f"--position + rows must fit in --slots ({args.slots})")
    torch.set_grad_enabled(False)
    report = {"slots": args.slots, "position": args.position, "presets": [], "run_info": run_info()}
    for name in args.presets.split(","):
        config = dataclasses.replace(build_config(TrainConfig, f"train/{name}").model,
                                     context_length=max(1024, args.slots))
        torch.manual_seed(0)
        model = TransformerLM(config, device="cuda", dtype=DTYPE).eval()
        report["presets"].append({"preset": name, "model": model_rows(model, args.rows, args.slots, args.position),
                                  "ops": [row for r in args.rows for row in op_rows(config, r, args.slots,
                                                                                    args.position, copies=8)]})
        del model
        torch.cuda.empty_cache()
        write_text_atomic(RESULTS / "decode_rows.json", json.dumps(report, indent=1))
        write_text_atomic(RESULTS / "decode_rows.md", markdown(report))
        print(markdown(report), flush=True)


if __name__ == "__main__":
    main()
