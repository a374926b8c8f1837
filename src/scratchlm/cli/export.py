"""`scratchlm export hf|from-hf`: checkpoints to Hugging Face LlamaForCausalLM folders and back."""

from __future__ import annotations

import argparse

DTYPES = ("float32", "bfloat16")


def register(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)

    hf = verbs.add_parser("hf", help="write a checkpoint as a Hugging Face LlamaForCausalLM folder")
    hf.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    hf.add_argument("--out", required=True, help="output folder (config.json, model.safetensors, tokenizer)")
    hf.add_argument("--dtype", choices=DTYPES, default="float32", help="weight dtype (default: float32)")
    hf.add_argument("--overwrite", action="store_true", help="replace --out if it is not empty")
    hf.set_defaults(func=hf_cmd)

    back = verbs.add_parser("from-hf", help="import a Hugging Face LlamaForCausalLM folder as a scratchlm run")
    back.add_argument("--hf-dir", required=True, help="folder with config.json and model.safetensors")
    back.add_argument("--out", required=True, help="run folder to write (checkpoint.pt, tokenizer/)")
    back.add_argument("--overwrite", action="store_true", help="replace --out if it is not empty")
    back.set_defaults(func=from_hf_cmd)


# The library (torch, safetensors) is imported inside the commands: `scratchlm --help` loads every stage.


def hf_cmd(args: argparse.Namespace) -> int:
    import torch

    from scratchlm.export import export_hf

    out = export_hf(args.checkpoint, args.out, dtype=getattr(torch, args.dtype), overwrite=args.overwrite)
    tokenizer = "with tokenizer" if (out / "tokenizer.json").is_file() else "no tokenizer"
    print(f"exported {args.checkpoint} -> {out} (LlamaForCausalLM, {args.dtype}, {tokenizer})")
    return 0


def from_hf_cmd(args: argparse.Namespace) -> int:
    from scratchlm.export import import_hf

    out = import_hf(args.hf_dir, args.out, overwrite=args.overwrite)
    tokenizer = "with tokenizer" if (out / "tokenizer").is_dir() else "no tokenizer"
    print(f"imported {args.hf_dir} -> {out / 'checkpoint.pt'} ({tokenizer})")
    return 0
