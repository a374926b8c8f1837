"""`scratchlm speedrun`: the whole pipeline on a small built-in default (CPU-friendly)."""

from __future__ import annotations

import argparse
import time

from scratchlm import speedrun
from scratchlm.cli.tokenizer import format_stats
from scratchlm.config import add_dataclass_args, add_preset_args, config_from_args, write_run_info


def register(parser: argparse.ArgumentParser) -> None:
    add_preset_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted training stage")
    add_dataclass_args(parser, speedrun.SpeedrunConfig)
    parser.set_defaults(func=run_cmd)


def run_cmd(args: argparse.Namespace) -> int:
    config = config_from_args(args, speedrun.SpeedrunConfig)
    t0 = time.perf_counter()
    summary = speedrun.run(config, resume=args.resume)
    write_run_info(config.out, config)
    tok, training = summary["tokenizer"], summary["training"]
    print(f"\n== speedrun finished in {time.perf_counter() - t0:.0f} s -> {config.out}")
    print(f"corpus: {', '.join(summary['corpus'])} ({tok['input_bytes'] / 1e6:.1f} MB)")
    print(f"tokenizer: {tok['vocab_size']} tokens, trained in {tok['pretokenize_seconds'] + tok['merge_seconds']:.1f} s; "
          f"training split {summary['tokens']:,} tokens")
    print(format_stats(summary["stats"]))
    print(f"model: {summary['params'] / 1e6:.2f}M parameters, {training['steps']} steps, {training['tokens']:,} tokens "
          f"in {training['seconds']:.0f} s")
    if training["val"]:
        val = training["val"]
        print(f"validation: loss {val['loss']:.3f} nats/token, perplexity {val['perplexity']:.1f}, {val['bits_per_byte']:.3f} bits/byte")
    if training["sample"]:
        print(f"sample: {training['sample']!r}")
    return 0
