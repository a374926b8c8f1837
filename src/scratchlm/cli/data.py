"""where data lives and public corpora (`where|list|download`); the web-data pipeline (`run|stats|tokenize`)
and its quality classifier (`train-quality`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scratchlm.atomic import write_text_atomic
from scratchlm.data import sources


def register(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)

    where = verbs.add_parser("where", help="print the data folder and why it was chosen",
                             description="Print the data folder ($SCRATCHLM_DATA, ../shared/data, or the download "
                                         "cache) and which rule chose it.")
    where.set_defaults(func=where_cmd)

    ls = verbs.add_parser("list", help="list the corpora `data download` can fetch")
    ls.set_defaults(func=list_cmd)

    dl = verbs.add_parser("download", help="download corpora from the Hugging Face hub",
                          description="Download registered corpora (see `scratchlm data list`). Finished files are "
                                      "skipped and interrupted downloads resume. $HF_ENDPOINT sets a mirror.")
    dl.add_argument("names", nargs="+", metavar="NAME", help="registry names, e.g. tinystories-valid")
    dl.add_argument("--dest", metavar="DIR", help="folder to download into (default: the download cache, "
                                                  "$SCRATCHLM_CACHE or ~/.cache/scratchlm/data)")
    dl.add_argument("--force", action="store_true", help="download again even when the file is already there")
    dl.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    dl.set_defaults(func=download_cmd)

    run = verbs.add_parser("run", help="run (or resume) a data pipeline given in TOML",
                           description="Run the steps of PIPELINE (TOML: inputs, [[steps]]) over every input file, one "
                                       "task per file; an interrupted run resumes when started again with the same --out.")
    run.add_argument("pipeline", metavar="PIPELINE", help="pipeline file, e.g. configs/data/webcrawl.toml")
    run.add_argument("--out", required=True, help="run folder (outputs, stats, completion markers)")
    _executor_args(run)
    run.set_defaults(func=run_cmd)

    st = verbs.add_parser("stats", help="per-step table of kept/dropped documents, bytes and time; and a plot")
    st.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `scratchlm data run`")
    st.add_argument("--plot", metavar="PNG", help="where to draw the plot (default: RUN_DIR/stats.png)")
    st.set_defaults(func=stats_cmd)

    tok = verbs.add_parser("tokenize", help="encode a run's output shards into train/val token files for training",
                           description="Encode JSONL.gz shards (a run folder's output/, or shard files) with a tokenizer "
                                       "into OUT/train.bin and OUT/val.bin (+ sidecars, manifest.json): pass them to "
                                       "`scratchlm train --data.train OUT/train.bin --data.val OUT/val.bin`.")
    tok.add_argument("inputs", nargs="+", metavar="SHARDS", help="run folders or .jsonl.gz shards")
    tok.add_argument("--tokenizer", required=True, help="tokenizer folder (needs the <|endoftext|> special token)")
    tok.add_argument("--out", required=True, help="output folder")
    tok.add_argument("--val-fraction", type=float, default=0.01, help="share of documents for validation")
    _executor_args(tok)
    tok.set_defaults(func=tokenize_cmd)

    tq = verbs.add_parser("train-quality", help="train the quality classifier (Wikipedia vs crawl) on the data folder",
                          description="Train the fastText-style quality classifier on shared data (labels hq: "
                                      "Wikipedia, cc: crawl pages), report held-out accuracy, save it for the "
                                      "`classifier` pipeline step.")
    tq.add_argument("--out", required=True, help="folder for model.safetensors and model.json")
    tq.add_argument("--test-fraction", type=float, default=0.3, help="documents held out for the accuracy")
    tq.add_argument("--epochs", type=int, default=5, help="passes over the training documents")
    tq.set_defaults(func=train_quality_cmd)


def _executor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local process pool (default) or a Ray cluster")
    parser.add_argument("--num-workers", type=int, default=1,
                        help="local: processes (0: one per core); ray: CPUs of a local instance")
    parser.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _executor(args: argparse.Namespace):
    from scratchlm.data.executors import make_executor

    return make_executor(args.executor, args.num_workers, args.address, not args.no_progress)


def where_cmd(args: argparse.Namespace) -> int:
    root, why = sources.locate_data_root()
    print(root)
    print(f"  chosen because: {why}")
    print(f"  downloads go to: {sources.download_dir()}")
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    rows = [("NAME", "SIZE", "HERE", "SOURCE", "DESCRIPTION")]
    for d in sources.REGISTRY.values():
        here = "yes" if (sources.download_dir() / d.filename).exists() else "-"
        rows.append((d.name, d.approx_size, here, f"{d.repo}/{d.filename}", d.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    return 0


def download_cmd(args: argparse.Namespace) -> int:
    for name in args.names:
        sources.get_dataset(name)  # fail on a typo before spending minutes on the names before it
    for name in args.names:
        print(sources.download(name, args.dest, force=args.force, progress=not args.no_progress))
    return 0


def run_cmd(args: argparse.Namespace) -> int:
    import sys

    from scratchlm.config import from_dict, load_config_file
    from scratchlm.data.pipeline import PipelineConfig, run_pipeline
    from scratchlm.data.report import format_stats

    cfg = from_dict(PipelineConfig, load_config_file(args.pipeline))
    stats = run_pipeline(cfg, args.out, _executor(args), argv=sys.argv)
    print(format_stats(stats))
    print(f"kept documents: {Path(args.out) / 'output'}; stats: {Path(args.out) / 'stats.json'}")
    return 0


def stats_cmd(args: argparse.Namespace) -> int:
    from scratchlm.data.pipeline import collect_stats
    from scratchlm.data.report import format_stats, plot_stats

    run_dir = Path(args.run_dir)
    if not (run_dir / "plan.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a pipeline run folder (no plan.json)")
    stats = collect_stats(run_dir)
    print(format_stats(stats))
    print(f"plot: {plot_stats(stats, args.plot or run_dir / 'stats.png')}")
    return 0


def tokenize_cmd(args: argparse.Namespace) -> int:
    from scratchlm.data.token_shards import tokenize_shards
    from scratchlm.tokenizer.bpe import Tokenizer

    shards = []
    for item in map(Path, args.inputs):
        found = sorted((item / "output").glob("*.jsonl.gz")) if item.is_dir() else [item]
        if not found or not all(p.is_file() for p in found):
            raise FileNotFoundError(f"{item}: no .jsonl.gz shards (give a run folder or shard files)")
        shards += found
    manifest = tokenize_shards(shards, Tokenizer.load(args.tokenizer), args.out, _executor(args), args.val_fraction)
    for split in ("train", "val"):
        m = manifest[split]
        print(f"{split}: {m['documents']:,} documents, {m['tokens']:,} tokens -> {Path(args.out) / m['path']}")
    return 0


def train_quality_cmd(args: argparse.Namespace) -> int:
    from scratchlm.data.classifier import ClassifierConfig, accuracy, train_classifier
    from scratchlm.data.quality_data import quality_examples, split

    texts, labels = quality_examples(sources.data_root())
    train, test = split(len(texts), args.test_fraction)
    model = train_classifier([texts[i] for i in train], [labels[i] for i in train],
                             ClassifierConfig(epochs=args.epochs), progress=True)
    acc = accuracy(model, [texts[i] for i in test], [labels[i] for i in test])
    model.save(args.out)
    report = {"documents": len(texts), "train": len(train), "test": len(test), "test_accuracy": acc}
    write_text_atomic(Path(args.out) / "report.json", json.dumps(report, indent=2) + "\n")
    print(f"held-out accuracy {acc:.3f} on {len(test)} documents ({len(train)} for training); saved to {args.out}")
    return 0
