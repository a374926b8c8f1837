"""`scratchlm sft`: supervised fine-tuning on instruction data in the chat template."""

from __future__ import annotations

import argparse

from scratchlm.config import add_dataclass_args, add_preset_args, config_from_args


def register(parser: argparse.ArgumentParser) -> None:
    from scratchlm.alignment import SFTConfig  # imports torch, as `train` does

    add_preset_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    add_dataclass_args(parser, SFTConfig)
    parser.set_defaults(func=sft_cmd)


def sft_cmd(args: argparse.Namespace) -> int:
    from scratchlm.alignment import SFTConfig, sft

    cfg = config_from_args(args, SFTConfig)
    summary = sft(cfg, resume=args.resume)
    print(f"done: {summary['steps']} steps in {summary['seconds']:.0f} s -> {cfg.out}")
    if summary.get("val"):
        print("held-out: " + ", ".join(f"{k} {v:.4g}" for k, v in summary["val"].items() if isinstance(v, float)))
    return 0
