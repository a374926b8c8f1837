"""`scratchlm train`: train a Transformer LM on token files."""

from __future__ import annotations

import argparse

from scratchlm.config import add_dataclass_args, add_preset_args, config_from_args
from scratchlm.train import TrainConfig, train


def register(parser: argparse.ArgumentParser) -> None:
    add_preset_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    add_dataclass_args(parser, TrainConfig)
    parser.set_defaults(func=train_cmd)


def train_cmd(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, TrainConfig)
    summary = train(cfg, resume=args.resume)
    print(f"done: {summary['steps']} steps, {summary['tokens']:,} tokens in {summary['seconds']:.0f} s -> {cfg.out}")
    if summary["val"]:
        print(f"final val loss {summary['val']['loss']:.4f} ({summary['val']['bits_per_byte']:.3f} bits/byte)")
    if summary["sample"]:
        print(f"sample: {summary['sample']}")
    return 0
