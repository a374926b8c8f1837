"""Tokenizer benchmark: scratchlm vs HF `tokenizers` (training, encoding) and tiktoken (encoding).

    python benchmarks/tokenizer.py [--train-corpus gutenberg] [--quick]

Same corpus, same vocabulary size, same number of cores. Each measurement runs in a fresh child
process (so caches start cold and the peak RSS of its whole process tree, workers included, is
its own); this script runs them one after another and writes benchmarks/results/tokenizer.{json,md}.
Encoding results are checked to be identical across the three implementations before timing counts.
"""

from __future__ import annotations

import argparse
import json
import lzma
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results"
EOT = "<|endoftext|>"


def data_dir() -> Path:
    return Path(os.environ.get("SCRATCHLM_DATA", ROOT.parent / "shared" / "data"))


def prepare_corpus(name: str, work: Path, shards: int | None = None) -> Path:
    """Decompress pretrain/<name>-NNN.txt.xz shards into one plain file (both trainers read plain text)."""
    paths = sorted((data_dir() / "pretrain").glob(f"{name}-[0-9]*.txt.xz"))[:shards]
    out = work / f"{name}{'-' + str(shards) if shards else ''}.txt"
    if not out.exists():
        with open(out, "w", encoding="utf-8", newline="") as f:
            for i, p in enumerate(paths):
                with lzma.open(p, "rt", encoding="utf-8", newline="") as src:
                    f.write((EOT + "\n" if i else "") + src.read())
    return out


def measure(fn, *args) -> dict:
    """Run fn(*args) -> dict in a child process; add wall time and the peak RSS of the process tree."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child, fn, args))
    t0 = time.perf_counter()
    proc.start()
    peak = 0
    ps = psutil.Process(proc.pid)
    while proc.is_alive():
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        if parent.poll(0.05):
            break
    result = parent.recv()
    proc.join()
    if "error" in result:
        raise RuntimeError(result["error"])
    result.setdefault("seconds", time.perf_counter() - t0)
    result["peak_rss_mb"] = round(peak / 2**20, 1)
    return result


def _child(conn, fn, args):
    try:
        conn.send(fn(*args))
    except Exception as e:  # reported to the parent, which raises
        conn.send({"error": f"{type(e).__name__}: {e}"})


# ------------------------------------------------------------------------------------------------
# training


def train_ours(path: str, vocab_size: int, workers: int) -> dict:
    from scratchlm.tokenizer import train_bpe

    t0 = time.perf_counter()
    vocab, merges = train_bpe(path, vocab_size, [EOT], num_workers=workers, progress=False)
    return {"seconds": time.perf_counter() - t0, "vocab": len(vocab), "merges": [a.hex() + " " + b.hex() for a, b in merges[:200]]}


def train_hf(path: str, vocab_size: int, workers: int) -> dict:
    os.environ["RAYON_NUM_THREADS"] = str(workers)
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    t0 = time.perf_counter()
    tok.train([path], trainer)
    return {"seconds": time.perf_counter() - t0, "vocab": tok.get_vocab_size()}


# ------------------------------------------------------------------------------------------------
# encoding (GPT-2 vocabulary)


def gpt2_files() -> tuple[str, str]:
    d = data_dir() / "tokenizer"
    return str(d / "gpt2_vocab.json"), str(d / "gpt2_merges.txt")


def encode_ours(path: str, workers: int) -> dict:
    from scratchlm.tokenizer import Tokenizer
    from scratchlm.tokenizer.token_files import encode_files, read_tokens

    tok = Tokenizer.from_files(*gpt2_files(), special_tokens=[EOT])
    if workers == 1:
        text = Path(path).read_text(encoding="utf-8")
        t0 = time.perf_counter()
        ids = tok.encode(text)
        return {"seconds": time.perf_counter() - t0, "tokens": len(ids), "checksum": _checksum(ids)}
    out = Path(path).with_suffix(".bin")
    t0 = time.perf_counter()  # file in, token file out: reading and writing are included
    encode_files(tok, [path], out, num_workers=workers, range_mb=2, progress=False)
    seconds = time.perf_counter() - t0
    ids = read_tokens(out).tolist()
    return {"seconds": seconds, "tokens": len(ids), "checksum": _checksum(ids)}


def encode_tiktoken(path: str, workers: int) -> dict:
    import tiktoken

    from scratchlm.tokenizer import Tokenizer
    from scratchlm.tokenizer.pretokenize import GPT2_PATTERN

    ours = Tokenizer.from_files(*gpt2_files())
    ranks = {ours.vocab[i]: i for i in range(50256)}  # GPT-2 ids are merge ranks
    enc = tiktoken.Encoding("gpt2-offline", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256})
    text = Path(path).read_text(encoding="utf-8")
    t0 = time.perf_counter()
    if workers == 1:
        ids = enc.encode(text, allowed_special="all")
    else:
        docs = _docs(text)
        ids = [i for doc in enc.encode_batch(docs, num_threads=workers, allowed_special="all") for i in doc]
    return {"seconds": time.perf_counter() - t0, "tokens": len(ids), "checksum": _checksum(ids)}


def encode_hf(path: str, workers: int) -> dict:
    os.environ["RAYON_NUM_THREADS"] = str(workers)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if workers > 1 else "false"
    import tokenizers

    tok = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(*gpt2_files()))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.add_special_tokens([EOT])
    docs = _docs(Path(path).read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    ids = [i for e in tok.encode_batch(docs, add_special_tokens=False) for i in e.ids]
    return {"seconds": time.perf_counter() - t0, "tokens": len(ids), "checksum": _checksum(ids)}


def _docs(text: str) -> list[str]:
    """Documents with their separators kept, so batch encoders see exactly the same text."""
    parts = text.split(EOT)
    return [p + EOT for p in parts[:-1]] + [parts[-1]]


def _checksum(ids: list[int]) -> str:
    import hashlib

    import numpy as np

    return hashlib.sha256(np.asarray(ids, dtype=np.uint32).tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-corpus", default="gutenberg", help="pretrain corpus name (gutenberg is the largest)")
    parser.add_argument("--vocab-sizes", default="10000,32000")
    parser.add_argument("--quick", action="store_true", help="one shard only (a smoke run, not for the docs)")
    parser.add_argument("--repeats", type=int, default=2, help="training runs per side; the fastest counts (the machine is noisy)")
    parser.add_argument("--work", default=str(ROOT / "local_data" / "bench"), help="scratch folder for decompressed corpora")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    report = {"machine": {"cpus": cores, "python": platform.python_version(), "platform": platform.platform()},
              "command": "python benchmarks/tokenizer.py " + " ".join(sys.argv[1:]), "train": [], "encode": []}

    train_path = prepare_corpus(args.train_corpus, work, 1 if args.quick else None)
    train_mb = train_path.stat().st_size / 1e6
    for vs in map(int, args.vocab_sizes.split(",")):
        ours = min((measure(train_ours, str(train_path), vs, cores) for _ in range(args.repeats)), key=lambda r: r["seconds"])
        hf = min((measure(train_hf, str(train_path), vs, cores) for _ in range(args.repeats)), key=lambda r: r["seconds"])
        row = {"corpus": f"{args.train_corpus} ({train_mb:.0f} MB)", "vocab_size": vs, "cores": cores,
               "ours_s": round(ours["seconds"], 1), "hf_s": round(hf["seconds"], 1), "ratio_ours_over_hf": round(ours["seconds"] / hf["seconds"], 2),
               "ours_peak_mb": ours["peak_rss_mb"], "hf_peak_mb": hf["peak_rss_mb"]}
        report["train"].append(row)
        print(row, flush=True)

    # Encoding: held-out shards of all three corpora (prose, encyclopedia, technical markdown), then the
    # large training corpus, where the caches of our encoder are warm for most of the text.
    enc_path = work / "encode-mix.txt"
    if not enc_path.exists():
        with open(enc_path, "w", encoding="utf-8", newline="") as f:
            for i, name in enumerate(["wikipedia", "gutenberg", "cppdocs"]):
                with lzma.open(data_dir() / "pretrain" / f"{name}-valid.txt.xz", "rt", encoding="utf-8", newline="") as src:
                    f.write((EOT if i else "") + src.read(4_000_000 if args.quick else None))
    corpora = [(enc_path, "wiki+gutenberg+cppdocs valid")] + ([] if args.quick else [(train_path, f"{args.train_corpus} train")])
    for path, label in corpora:
        mb = path.stat().st_size / 1e6
        for workers in sorted({1, cores}):
            runs = {name: measure(fn, str(path), workers) for name, fn in [("ours", encode_ours), ("tiktoken", encode_tiktoken), ("hf", encode_hf)]}
            if len({r["checksum"] for r in runs.values()}) != 1:
                raise SystemExit(f"token ids differ between implementations: {runs}")
            row = {"corpus": f"{label} ({mb:.0f} MB)", "cores": workers, "tokens": runs["ours"]["tokens"]}
            for name, r in runs.items():
                row[f"{name}_mb_s"] = round(mb / r["seconds"], 2)
                row[f"{name}_peak_mb"] = r["peak_rss_mb"]
            row["ours_over_hf"] = round(row["ours_mb_s"] / row["hf_mb_s"], 2)
            row["ours_over_tiktoken"] = round(row["ours_mb_s"] / row["tiktoken_mb_s"], 2)
            report["encode"].append(row)
            print(row, flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (RESULTS / f"tokenizer{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"tokenizer{suffix}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Machine: {m['cpus']} cores, Python {m['python']}, {m['platform']}. Command: `{report['command']}`", "",
             "| training corpus | vocab | cores | scratchlm (s) | HF tokenizers (s) | ours / HF time | peak RSS ours / HF (MB) |",
             "|---|---|---|---|---|---|---|"]
    for r in report["train"]:
        lines.append(f"| {r['corpus']} | {r['vocab_size']:,} | {r['cores']} | {r['ours_s']} | {r['hf_s']} | **{r['ratio_ours_over_hf']}×** | {r['ours_peak_mb']:.0f} / {r['hf_peak_mb']:.0f} |")
    lines += ["", "| encoding corpus (GPT-2 vocab) | cores | scratchlm MB/s | tiktoken MB/s | HF MB/s | ours / tiktoken | ours / HF | peak RSS ours / tiktoken / HF (MB) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["encode"]:
        lines.append(f"| {r['corpus']} | {r['cores']} | {r['ours_mb_s']} | {r['tiktoken_mb_s']} | {r['hf_mb_s']} | **{r['ours_over_tiktoken']}×** | **{r['ours_over_hf']}×** | "
                     f"{r['ours_peak_mb']:.0f} / {r['tiktoken_peak_mb']:.0f} / {r['hf_peak_mb']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
