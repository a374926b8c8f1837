"""`scratchlm train`: train a Transformer LM on token files (one process, or many under torchrun)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import get_args

from scratchlm.config import add_dataclass_args, add_preset_args, config_from_args, to_dict
from scratchlm.parallel import distributed, is_rank0, launch
from scratchlm.parallel.config import ParallelMode
from scratchlm.parallel.dist import launched_by_torchrun
from scratchlm.train import TrainConfig, resolve_device, train


def register(parser: argparse.ArgumentParser) -> None:
    add_preset_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="train on N ranks of this machine: relaunches this command under torchrun "
                             "(torchrun --standalone --nproc-per-node N -m scratchlm train ...) (default: 1)")
    parser.add_argument("--parallel", dest="parallel_mode", choices=get_args(ParallelMode), default=None,
                        help="short for --parallel.mode")
    add_dataclass_args(parser, TrainConfig)
    parser.set_defaults(func=train_cmd)


def train_cmd(args: argparse.Namespace) -> int:
    if args.parallel_mode is not None and not hasattr(args, "parallel.mode"):
        setattr(args, "parallel.mode", args.parallel_mode)
    cfg = config_from_args(args, TrainConfig)
    if args.nproc > 1:
        if launched_by_torchrun():
            raise ValueError("--nproc launches torchrun itself: leave it out when running under torchrun")
        return launch_ranks(cfg, args)
    with distributed(resolve_device(cfg.device), cfg.parallel.timeout_s):
        summary = train(cfg, resume=args.resume)
        if not is_rank0():
            return 0
    print(f"done: {summary['steps']} steps, {summary['tokens']:,} tokens in {summary['seconds']:.0f} s -> {cfg.out}")
    if summary["val"]:
        print(f"final val loss {summary['val']['loss']:.4f} ({summary['val']['bits_per_byte']:.3f} bits/byte)")
    if summary["sample"]:
        print(f"sample: {summary['sample']}")
    return 0


def launch_ranks(cfg: TrainConfig, args: argparse.Namespace) -> int:
    """Run this training on args.nproc local ranks: each rank reads the resolved config from a temporary
    preset file, so every rank trains exactly the configuration resolved here."""
    with tempfile.TemporaryDirectory(prefix="scratchlm-launch-") as tmp:
        preset = os.path.join(tmp, "config.json")
        with open(preset, "w", encoding="utf-8") as f:
            json.dump(to_dict(cfg), f)
        argv = (["-v"] if args.verbose else []) + ["train", "--config", preset] + (["--resume"] if args.resume else [])
        return launch(args.nproc, "scratchlm", argv)
