"""`scratchlm plot RUN_DIR...`: loss and learning-rate curves as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from scratchlm.train.plot import plot_runs


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="training run folders (each holds metrics.jsonl)")
    parser.add_argument("--out", help="PNG to write (default: RUN_DIR/curves.png for one run, curves.png for several)")
    parser.add_argument("--log-x", action="store_true", help="logarithmic token axis")
    parser.set_defaults(func=plot_cmd)


def plot_cmd(args: argparse.Namespace) -> int:
    out = args.out or (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1 else "curves.png")
    print(f"wrote {plot_runs(args.runs, out, log_x=args.log_x)}")
    return 0
