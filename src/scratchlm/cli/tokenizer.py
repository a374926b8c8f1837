"""`scratchlm tokenizer train|encode|stats`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scratchlm.config import add_dataclass_args, add_preset_args, config_from_args, to_dict, write_run_info
from scratchlm.tokenizer import BPETrainConfig, Tokenizer, train_tokenizer
from scratchlm.tokenizer.token_files import encode_files, read_sidecar, read_tokens, token_stats


def register(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)

    train = verbs.add_parser("train", help="train a byte-level BPE tokenizer on text files")
    train.add_argument("--input", nargs="+", required=True, help="text files (plain, .gz, .xz or .bz2)")
    train.add_argument("--out", required=True, help="output folder for the tokenizer")
    train.add_argument("--force", action="store_true", help="train again even if --out holds this exact run")
    add_preset_args(train)
    add_dataclass_args(train, BPETrainConfig)
    train.set_defaults(func=train_cmd)

    enc = verbs.add_parser("encode", help="encode text files into a token file (numpy memmap + JSON sidecar)")
    enc.add_argument("--tokenizer", required=True, help="tokenizer folder")
    enc.add_argument("--input", nargs="+", required=True, help="text files, concatenated in order")
    enc.add_argument("--out", required=True, help="token file to write, e.g. tokens.bin")
    enc.add_argument("--num-workers", type=int, default=0, help="processes (default: one per core)")
    enc.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    enc.set_defaults(func=encode_cmd)

    st = verbs.add_parser("stats", help="compression (bytes/token) and vocabulary usage")
    st.add_argument("--tokenizer", required=True, help="tokenizer folder")
    src = st.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", help="text files to encode and measure")
    src.add_argument("--tokens", help="a token file written by `tokenizer encode`")
    st.add_argument("--max-mb", type=float, default=16, help="measure at most this many MB of --input text")
    st.add_argument("--json", help="also write the stats to this JSON file")
    st.set_defaults(func=stats_cmd)


def train_cmd(args: argparse.Namespace) -> int:
    config = config_from_args(args, BPETrainConfig)
    out = Path(args.out)
    run = {"input": [str(p) for p in args.input], "bpe": to_dict(config)}
    if not args.force and _same_run(out, run):
        print(f"{out} already holds a tokenizer trained with this exact config (use --force to retrain)")
        return 0
    tok, stats = train_tokenizer(args.input, out, config)
    write_run_info(out, run)
    print(f"trained {tok.vocab_size} tokens ({stats['merges']} merges) on {stats['input_bytes'] / 1e6:.1f} MB in "
          f"{stats['pretokenize_seconds'] + stats['merge_seconds']:.1f} s -> {out}")
    print(f"longest tokens: {stats['longest_tokens']}")
    return 0


def _same_run(out: Path, run: dict) -> bool:
    """Whether `out` holds a finished run with the same inputs and the settings that shape the result."""
    def identity(r: dict) -> dict:
        return {"input": r["input"], **{k: r["bpe"][k] for k in ("vocab_size", "special_tokens", "pattern")}}

    try:
        done = (out / "scratchlm_tokenizer.json").exists()
        return done and identity(json.loads((out / "config.json").read_text())) == identity(run)
    except (OSError, KeyError, json.JSONDecodeError):
        return False


def encode_cmd(args: argparse.Namespace) -> int:
    tok = Tokenizer.load(args.tokenizer)
    t0 = time.perf_counter()
    meta = encode_files(tok, args.input, args.out, num_workers=args.num_workers, progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    n_bytes = meta["text_bytes"]
    print(f"{meta['count']:,} tokens ({meta['dtype']}) from {n_bytes / 1e6:.1f} MB in {seconds:.1f} s "
          f"({n_bytes / 1e6 / seconds:.1f} MB/s, {n_bytes / max(meta['count'], 1):.2f} bytes/token) -> {args.out}")
    return 0


def stats_cmd(args: argparse.Namespace) -> int:
    tok = Tokenizer.load(args.tokenizer)
    if args.tokens:
        ids = read_tokens(args.tokens, tokenizer_sha256=tok.hash)
        n_bytes = read_sidecar(args.tokens)["text_bytes"]
    else:
        text = "".join(Path(p).read_text(encoding="utf-8") for p in args.input)[: int(args.max_mb * 1e6)]
        ids, n_bytes = tok.encode(text), len(text.encode("utf-8"))
    stats = token_stats(tok, ids, n_bytes)
    print(format_stats(stats))
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return 0


def format_stats(stats: dict) -> str:
    lines = [
        f"bytes          {stats['bytes']:,}",
        f"tokens         {stats['tokens']:,}",
        f"bytes/token    {stats['bytes_per_token']:.3f}",
        f"vocab used     {stats['vocab_used']:,} / {stats['vocab_size']:,} ({100 * stats['vocab_used_fraction']:.1f}%)",
        "top tokens     " + ", ".join(f"{t['token']!r}×{t['count']:,}" for t in stats["top_tokens"][:8]),
    ]
    return "\n".join(lines)
