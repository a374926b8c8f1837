"""`scratchlm <stage> <verb> ...`: parse flags, build a typed config, call the library, return an exit code.

Each stage is a module `scratchlm.cli.<stage>` with `register(parser)`, which adds the stage's verbs to
its parser and sets `func` (Namespace -> int exit code) on each.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
from types import ModuleType

import scratchlm

# Stage name -> one line for `scratchlm --help`, in pipeline order. A stage whose module does not exist
# yet is left out, so stages can land one at a time.
STAGES: dict[str, str] = {
    "data": "web-crawl pipelines to clean, deduplicated, tokenized text; where data lives; downloads",
    "tokenizer": "train, encode with and inspect byte-level BPE tokenizers",
    "train": "train a Transformer language model on token files",
    "generate": "sample text from a checkpoint",
    "serve": "an OpenAI-compatible HTTP server with a chat page",
    "chat": "chat with a checkpoint in the terminal",
    "eval": "evaluate a checkpoint (perplexity, MMLU, GSM8K, MATH, instructions, safety) into a report card",
    "sft": "supervised fine-tuning on instruction data in the chat template",
    "dpo": "direct preference optimization on chosen/rejected pairs",
    "grpo": "policy-gradient RL (GRPO) on verifiable rewards",
    "plot": "draw loss and learning-rate curves of training runs",
    "export": "export checkpoints to Hugging Face (LlamaForCausalLM) and import them back",
    "scaling": "IsoFLOP sweeps, scaling-law fits and compute-optimal planning",
    "bench": "time, profile and memory-account a training step of a preset's model",
    "speedrun": "the whole pipeline end to end on a small default",
}

# Errors a user can fix from the message alone: printed as one line, exit code 2.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, ConnectionError)  # ConfigError is a ValueError
_OVERRIDE = re.compile(r"^--[A-Za-z_][\w.-]*=")  # `--model.d_model=512`: a --set in short form


def load_stage(name: str) -> ModuleType | None:
    """The stage's CLI module, or None when it does not exist. An ImportError *inside* it propagates."""
    module_name = f"scratchlm.cli.{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            return None
        raise


def build_parser(stages: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser, or one with only `stages` (importing a stage can import torch: only pay for one)."""
    parser = argparse.ArgumentParser(prog="scratchlm", description=scratchlm.__doc__)
    parser.add_argument("--version", action="version", version=f"scratchlm {scratchlm.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level (default: INFO)")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name in stages or list(STAGES):
        module = load_stage(name)
        if module is not None:
            help_ = STAGES.get(name) or (module.__doc__ or "").strip().splitlines()[0]
            module.register(sub.add_parser(name, help=help_, description=help_))
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse `argv`; `--a.b=value` left over becomes an override for stages that take `--set`."""
    stage = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([stage] if stage in STAGES else None)
    args, extras = parser.parse_known_args(argv)
    overrides = [a for a in extras if _OVERRIDE.match(a)]
    unknown = [a for a in extras if not _OVERRIDE.match(a)]
    if unknown or (overrides and not isinstance(getattr(args, "overrides", None), list)):
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    if overrides:
        args.overrides = args.overrides + [a.removeprefix("--") for a in overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors: argparse has printed the message
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    # Logging is configured here, never at import: the library only logs, and tests import it freely.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if os.environ.get("SCRATCHLM_DEBUG") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
