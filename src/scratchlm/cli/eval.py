"""`scratchlm eval`: evaluate a checkpoint (report card), or `scratchlm eval compare` several report cards."""

from __future__ import annotations

import argparse
from pathlib import Path

from scratchlm.atomic import write_text_atomic
from scratchlm.config import add_dataclass_args, add_preset_args, config_from_args


def register(parser: argparse.ArgumentParser) -> None:
    from scratchlm.eval.harness import EvalConfig  # imports torch, as `train` does

    add_preset_args(parser)
    add_dataclass_args(parser, EvalConfig)
    parser.set_defaults(func=eval_cmd)
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>", required=False)
    help_ = "one table of headline metrics across report cards (rows: checkpoints)"
    compare = verbs.add_parser("compare", help=help_, description=help_)
    compare.add_argument("reports", nargs="+", help="report folders (or report.json files) from `scratchlm eval`")
    compare.add_argument("--out", help="also write the table to this Markdown file")
    compare.set_defaults(func=compare_cmd)


def default_out(checkpoint: str) -> Path:
    """<run>/eval/<checkpoint name>: beside the checkpoint, one folder per checkpoint file."""
    path = Path(checkpoint)
    return path / "eval" / "checkpoint" if path.is_dir() else path.parent / "eval" / path.stem


def eval_cmd(args: argparse.Namespace) -> int:
    from scratchlm.alignment.chat import prompt_formatter
    from scratchlm.eval.harness import EvalConfig, run_eval
    from scratchlm.eval.report import render_report
    from scratchlm.train.checkpoint import load_trained_model
    from scratchlm.train.data import resolve_device
    from scratchlm.train.loop import autocast_dtype

    cfg = config_from_args(args, EvalConfig)
    if not cfg.checkpoint:
        raise ValueError("--checkpoint is required: a checkpoint file or run folder")
    device = resolve_device(cfg.device)
    trained = load_trained_model(cfg.checkpoint, device)
    if trained.tokenizer is None:
        raise ValueError(f"no tokenizer/ folder beside {cfg.checkpoint}: evaluation needs the model's tokenizer")
    out = Path(cfg.out) if cfg.out else default_out(cfg.checkpoint)
    report = run_eval(cfg, trained.model, trained.tokenizer, out, step=trained.step,
                      dtype=autocast_dtype(cfg.dtype, device), format_prompt=prompt_formatter(trained.tokenizer, cfg.prompt_style))
    print(render_report(report), end="")
    print(f"report card -> {out / 'report.md'}")
    return 0


def compare_cmd(args: argparse.Namespace) -> int:
    from scratchlm.eval.report import compare_table, load_report

    reports = [load_report(path) for path in args.reports]
    table = compare_table(reports, names=[str(path) for path in args.reports])
    if args.out:
        write_text_atomic(args.out, table)
    print(table, end="")
    return 0
