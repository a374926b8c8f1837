"""`scratchlm speedrun`: the whole pipeline on a small built-in default (CPU-friendly)."""

from __future__ import annotations

import argparse
import time

from scratchlm import speedrun
from scratchlm.cli.tokenizer import format_stats
from scratchlm.config import add_dataclass_args, add_preset_args, config_from_args, write_run_info


def register(parser: argparse.ArgumentParser) -> None:
    add_preset_args(parser)
    add_dataclass_args(parser, speedrun.SpeedrunConfig)
    parser.set_defaults(func=run_cmd)


def run_cmd(args: argparse.Namespace) -> int:
    config = config_from_args(args, speedrun.SpeedrunConfig)
    t0 = time.perf_counter()
    summary = speedrun.run(config)
    write_run_info(config.out, config)
    train = summary["train"]
    print(f"\n== speedrun finished in {time.perf_counter() - t0:.1f} s -> {config.out}")
    print(f"corpus: {', '.join(summary['corpus'])} ({train['input_bytes'] / 1e6:.1f} MB on disk)")
    print(f"tokenizer: {train['vocab_size']} tokens, trained in {train['pretokenize_seconds'] + train['merge_seconds']:.1f} s")
    print(f"token file: {summary['tokens']:,} tokens")
    print(format_stats(summary["stats"]))
    print(f"example ({len(summary['example'])} tokens): {summary['example']}")
    return 0
