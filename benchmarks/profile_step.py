"""Where a training step's GPU time goes, for scratchlm and the Hugging Face Llama baseline of
benchmarks/train_throughput.py side by side: the top kernels from torch.profiler over 5 steps.

    PYTHONPATH=src python benchmarks/profile_step.py --preset gpt2-small-124m --batch 32 [--trace-dir DIR]

The profiling itself is scratchlm.profiling (`profile_steps`, `top_ops_table`); for scratchlm alone, with a
phase split, per-layer ranges and a memory snapshot, use `scratchlm bench model --preset P --profile --memory`.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scratchlm.config import build_config  # noqa: E402
from scratchlm.profiling import profile_steps, top_ops_table  # noqa: E402
from scratchlm.train import TrainConfig  # noqa: E402
from train_throughput import IMPLS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="gpt2-small-124m")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--impl", default="scratchlm,huggingface")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--trace-dir", type=Path, help="also write <impl>.trace.json (Chrome/Perfetto) here")
    args = parser.parse_args()
    device = torch.device("cuda")
    cfg = build_config(TrainConfig, f"train/{args.preset}")
    seq = cfg.model.context_length
    tokens = torch.randint(0, cfg.model.vocab_size, (args.batch, seq + 1), device="cuda")
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    for name in args.impl.split(","):
        step = IMPLS[name](cfg, argparse.Namespace(no_compile=False, compile_mode="default"))
        for _ in range(5):
            step(x, y)
        trace = args.trace_dir / f"{name}.trace.json" if args.trace_dir else None
        prof = profile_steps(partial(step, x, y), 5, device, trace)
        print(f"=== {name} {args.preset} batch {args.batch}: top kernels over 5 steps")
        print(top_ops_table(prof, device, rows=args.rows))
        del step, prof
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
