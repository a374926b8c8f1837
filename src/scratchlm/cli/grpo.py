"""`scratchlm grpo`: policy-gradient RL (GRPO) on verifiable rewards."""

from __future__ import annotations

import argparse

from scratchlm.config import add_dataclass_args, add_preset_args, config_from_args


def register(parser: argparse.ArgumentParser) -> None:
    from scratchlm.alignment import GRPOConfig  # imports torch, as `train` does

    add_preset_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    add_dataclass_args(parser, GRPOConfig)
    parser.set_defaults(func=grpo_cmd)


def grpo_cmd(args: argparse.Namespace) -> int:
    from scratchlm.alignment import GRPOConfig, grpo

    cfg = config_from_args(args, GRPOConfig)
    summary = grpo(cfg, resume=args.resume)
    print(f"done: {summary['steps']} steps in {summary['seconds']:.0f} s -> {cfg.out}")
    if summary.get("val"):
        print("held-out: " + ", ".join(f"{k} {v:.4g}" for k, v in summary["val"].items() if isinstance(v, float)))
    return 0
