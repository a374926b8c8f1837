"""Real pretraining runs on one GPU, for tuning: encode a corpus once, train several variants of a preset
one after another in this process (so torch.compile's caches are shared), and tabulate/plot the results.

    PYTHONPATH=src python benchmarks/pretrain_sweep.py --tokenizer TOK --train 'gutenberg-0*.txt.xz' \
        --val gutenberg-valid.txt.xz --preset train/tinystories-17m \
        --variant base: --variant lr3e-3:optimizer.lr=3e-3 --variant muon:optimizer.name=muon --out DIR

Each `--variant NAME:KEY=VALUE,KEY=VALUE` overrides the preset (see `scratchlm train --help` for keys).
Writes DIR/sweep.json, DIR/sweep.md and DIR/sweep.png (validation curves of every variant).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scratchlm.config import build_config, to_dict  # noqa: E402
from scratchlm.tokenizer import Tokenizer  # noqa: E402
from scratchlm.tokenizer.token_files import encode_files  # noqa: E402
from scratchlm.train import TrainConfig, Trainer  # noqa: E402
from scratchlm.train.metrics import read_metrics  # noqa: E402
from scratchlm.train.plot import plot_runs  # noqa: E402


def encode(tokenizer: Tokenizer, inputs: list[str], out: Path) -> Path:
    if not Path(f"{out}.json").exists():
        t0 = time.perf_counter()
        meta = encode_files(tokenizer, inputs, out, progress=False)
        print(f"encoded {meta['count']:,} tokens from {meta['text_bytes'] / 1e6:.0f} MB in {time.perf_counter() - t0:.0f} s -> {out}", flush=True)
    return out


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition(":")
    return name, [o for o in overrides.split(",") if o]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--train", required=True, help="glob of training text files")
    parser.add_argument("--val", required=True, help="validation text file")
    parser.add_argument("--preset", default="train/tinystories-17m")
    parser.add_argument("--variant", action="append", required=True, help="NAME:KEY=VALUE,KEY=VALUE")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pretrain_sweep"), help="token files and runs")
    parser.add_argument("--out", type=Path, required=True, help="folder for the sweep's table and plot")
    args = parser.parse_args()

    tokenizer = Tokenizer.load(args.tokenizer)
    args.work.mkdir(parents=True, exist_ok=True)
    train = encode(tokenizer, sorted(glob.glob(args.train)), args.work / "train.bin")
    val = encode(tokenizer, [args.val], args.work / "val.bin")
    rows, runs = [], []
    for name, overrides in map(parse_variant, args.variant):
        run = args.work / name
        cfg = build_config(TrainConfig, args.preset, overrides, **{"data.train": str(train), "data.val": str(val),
                                                                    "data.tokenizer": args.tokenizer, "out": str(run)})
        print(f"== {name}: {' '.join(overrides) or '(preset)'}", flush=True)
        summary = Trainer(cfg).fit(report=lambda line: print(line, flush=True))
        train_records = [r for r in read_metrics(run) if r["split"] == "train"]
        rows.append({"variant": name, "overrides": overrides, "val_loss": summary["val"]["loss"],
                     "bits_per_byte": summary["val"]["bits_per_byte"], "tokens": summary["tokens"],
                     "seconds": summary["seconds"], "tokens_per_second": train_records[-1]["tokens_per_second"],
                     "mfu": train_records[-1]["mfu"], "sample": summary["sample"], "config": to_dict(cfg)})
        runs.append(run)
        print(f"== {name}: val loss {rows[-1]['val_loss']:.4f} in {summary['seconds']:.0f} s\n{summary['sample']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = ["| variant | overrides | val loss | bits/byte | tokens | seconds | tokens/s | MFU |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "n/a"
        table.append(f"| {r['variant']} | {' '.join(r['overrides'])} | {r['val_loss']:.4f} | {r['bits_per_byte']:.3f} | "
                     f"{r['tokens'] / 1e6:.0f}M | {r['seconds']:.0f} | {r['tokens_per_second']:,.0f} | {mfu} |")
    (args.out / "sweep.md").write_text("\n".join(table) + "\n")
    plot_runs(runs, args.out / "sweep.png")
    print("\n".join(table))


if __name__ == "__main__":
    main()
