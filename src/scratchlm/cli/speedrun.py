"""`scratchlm speedrun`: the whole pipeline on a small built-in default (CPU-friendly): web data, pretraining,
SFT and report cards (scratchlm.speedrun)."""

from __future__ import annotations

import argparse
import time

from scratchlm import speedrun
from scratchlm.cli.tokenizer import format_stats
from scratchlm.config import add_dataclass_args, add_preset_args, config_from_args, write_run_info


def register(parser: argparse.ArgumentParser) -> None:
    add_preset_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted pretrain or sft stage")
    add_dataclass_args(parser, speedrun.SpeedrunConfig)
    parser.set_defaults(func=run_cmd)


def run_cmd(args: argparse.Namespace) -> int:
    config = config_from_args(args, speedrun.SpeedrunConfig)
    t0 = time.perf_counter()
    results = speedrun.run(config, resume=args.resume)
    write_run_info(config.out, config)  # after the run, which fills in the stages' paths and vocabulary size
    print(f"\n== speedrun finished in {time.perf_counter() - t0:.0f} s -> {config.out}")
    if data := results.get("data"):
        used = "mixed into the pretraining corpus" if config.data.mix else "reported, not mixed into pretraining"
        print(f"web data: {data['inputs']} WARC files, {data['documents_in']} pages ({data['html_bytes'] / 1e6:.1f} MB HTML) "
              f"-> {data['documents']} clean documents, {data['bytes'] / 1e3:.0f} KB of text ({used})")
    if pre := results.get("pretrain"):
        print_pretrain(pre)
    if tuned := results.get("sft"):
        print(f"sft: {tuned['examples']} story prompts, {tuned['steps']} steps in {tuned['seconds']:.0f} s", end="")
        start, end = tuned["val_start"], tuned["val"]
        print(f"; held-out response loss {start['loss']:.3f} -> {end['loss']:.3f} nats/token" if start and end else "")
    if evaluated := results.get("eval"):
        print("\nreport cards (held-out TinyStories split):")
        print(evaluated["table"], end="")
        for name, card in evaluated["cards"].items():
            for record in card["generations"][:2]:
                print(f"{name}: {record['prompt']!r} -> {record['output'].strip()!r}")
        print(f"report cards and generations: {config.out}/eval/<model>/")
    if "sft" in results:
        print(f"\nnext: scratchlm chat --checkpoint {config.out}/sft\n      scratchlm serve --checkpoint {config.out}/sft")
    elif "pretrain" in results:
        print(f"\nnext: scratchlm generate --checkpoint {config.out}/model --prompt \"Once upon a time\"")
    return 0


def print_pretrain(summary: dict) -> None:
    tok, training = summary["tokenizer"], summary["training"]
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
