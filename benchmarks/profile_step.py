"""Where a training step's GPU time goes: CUDA-event split (forward+backward / clip / optimizer) and the top
kernels from torch.profiler, for scratchlm and the Hugging Face Llama baseline of benchmarks/train_throughput.py.

    PYTHONPATH=src python benchmarks/profile_step.py --preset gpt2-small-124m --batch 32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scratchlm.config import build_config  # noqa: E402
from scratchlm.train import TrainConfig  # noqa: E402
from train_throughput import IMPLS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="gpt2-small-124m")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--impl", default="scratchlm,huggingface")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    cfg = build_config(TrainConfig, f"train/{args.preset}")
    seq = cfg.model.context_length
    tokens = torch.randint(0, cfg.model.vocab_size, (args.batch, seq + 1), device="cuda")
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    for name in args.impl.split(","):
        step = IMPLS[name](cfg, argparse.Namespace(no_compile=False, compile_mode="default"))
        for _ in range(5):
            step(x, y)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step(x, y)
            torch.cuda.synchronize()
        print(f"=== {name} {args.preset} batch {args.batch}: top kernels over 5 steps")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=90))
        del step
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
