"""Data-pipeline benchmark: HTML extraction vs trafilatura, MinHash-LSH vs datasketch, and the whole pipeline
end to end on every real web sample of the data folder.

    python benchmarks/data.py [--repeats 3] [--skip-minhash] [--workdir runs/web-samples]

1. Extraction, on webcrawl/article_extraction_benchmark (181 real news/blog pages with gold article text):
   ours (resiliparse, main-content and full modes) and trafilatura 2.x (default, and fast=True) on the same
   decoded HTML strings; token-level precision / recall / F1 against the gold text (lowercased \\w+ tokens,
   multiset overlap, averaged over pages) and pages/s (best of --repeats, CPU time, one core).
2. MinHash-LSH: benchmarks/dedup.py's comparison (same documents, shingles, parameters), re-run here.
3. End to end: the Python 3.11 documentation HTML (530 pages) and the 181 article pages are packed into WARC
   files with our writer (scratchlm.data.readers.write_warc); with the real WARC, WET and CCNet samples they go
   through configs/data/webcrawl.toml on one core. Reported: documents/s per core, each step's share of the
   time, and the per-step kept/dropped table. The run folder stays in --workdir for inspection.

Writes benchmarks/results/data.{json,md}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import shutil
import sys
import tarfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"

from scratchlm.atomic import write_text_atomic  # noqa: E402
from scratchlm.config import from_dict, load_config_file  # noqa: E402
from scratchlm.data.executors import LocalExecutor  # noqa: E402
from scratchlm.data.extract import decode_html, html_to_text  # noqa: E402
from scratchlm.data.pipeline import PipelineConfig, run_pipeline  # noqa: E402
from scratchlm.data.readers import write_warc  # noqa: E402
from scratchlm.data.report import format_stats  # noqa: E402
from scratchlm.data.sources import data_root  # noqa: E402

_TOKEN = re.compile(r"\w+")
PACKED_DATE = datetime(2026, 1, 1, tzinfo=timezone.utc)  # fixed, so the packed WARC files are reproducible


def tokens(text: str | None) -> Counter:
    return Counter(_TOKEN.findall((text or "").lower()))


def prf(predicted: str | None, gold: str) -> tuple[float, float, float]:
    """Token-level precision, recall, F1 (multiset overlap); an empty extraction scores 0."""
    p, g = tokens(predicted), tokens(gold)
    common = sum((p & g).values())
    if not common:
        return 0.0, 0.0, 0.0
    precision, recall = common / sum(p.values()), common / sum(g.values())
    return precision, recall, 2 * precision * recall / (precision + recall)


def article_pages(root: Path) -> list[tuple[str, bytes, str, str]]:
    """(key, html bytes, gold text, url) of the 181 benchmark pages."""
    bench = root / "webcrawl" / "article_extraction_benchmark"
    gold = json.loads((bench / "ground-truth.json").read_text(encoding="utf-8"))
    pages = []
    for path in sorted((bench / "html").glob("*.html.gz")):
        key = path.name.removesuffix(".html.gz")
        pages.append((key, gzip.decompress(path.read_bytes()), gold[key]["articleBody"], gold[key]["url"]))
    return pages


def best_cpu(fn, items, repeats: int) -> tuple[list, float]:
    """(outputs of fn over items, the best CPU seconds of `repeats` runs)."""
    best, outputs = float("inf"), []
    for _ in range(repeats):
        start = time.process_time()
        outputs = [fn(x) for x in items]
        best = min(best, time.process_time() - start)
    return outputs, best


def extraction(root: Path, repeats: int) -> dict:
    import trafilatura

    pages = article_pages(root)
    htmls, decode_s = best_cpu(lambda p: decode_html(p[1]), pages, repeats)
    extractors = {
        "scratchlm main (resiliparse)": lambda h: html_to_text(h, "main"),
        "scratchlm full (resiliparse)": lambda h: html_to_text(h, "full"),
        "trafilatura": lambda h: trafilatura.extract(h),
        "trafilatura fast": lambda h: trafilatura.extract(h, fast=True),
    }
    report = {"pages": len(pages), "decode_seconds": decode_s, "extractors": {}}
    for name, fn in extractors.items():
        texts, seconds = best_cpu(fn, htmls, repeats)
        scores = [prf(t, gold) for t, (_, _, gold, _) in zip(texts, pages)]
        report["extractors"][name] = {
            "precision": sum(s[0] for s in scores) / len(scores),
            "recall": sum(s[1] for s in scores) / len(scores),
            "f1": sum(s[2] for s in scores) / len(scores),
            "empty": sum(not t for t in texts),
            "seconds": seconds,
            "pages_per_s": len(pages) / seconds,
        }
    return report


def pack_web_samples(root: Path, workdir: Path) -> list[Path]:
    """The Python docs and the article pages as WARC files (our writer), in workdir/packed."""
    out = workdir / "packed"
    out.mkdir(parents=True, exist_ok=True)
    docs = out / "python311-docs.warc.gz"
    with tarfile.open(root / "webcrawl" / "python311_docs_html.tar.xz") as tar:
        pages = [(f"https://docs.python.org/3.11/{m.name.removeprefix('./')}", tar.extractfile(m).read())
                 for m in tar.getmembers() if m.isfile()]
    write_warc(docs, pages, PACKED_DATE)
    articles = out / "article-benchmark.warc.gz"
    write_warc(articles, [(url, html) for _, html, _, url in article_pages(root)], PACKED_DATE)
    return [docs, articles]


def end_to_end(root: Path, workdir: Path) -> dict:
    packed = pack_web_samples(root, workdir)
    table = load_config_file(ROOT / "configs" / "data" / "webcrawl.toml")
    table["inputs"] = table["inputs"] + [str(p) for p in packed]
    cfg = from_dict(PipelineConfig, table)
    run_dir = workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    wall = time.perf_counter()
    stats = run_pipeline(cfg, run_dir, LocalExecutor(1, progress=False))
    wall = time.perf_counter() - wall
    cpu = sum(s["seconds"] for s in stats["steps"])
    documents = stats["reader"]["documents"]
    return {"inputs": [str(Path(p).name) for p in cfg.inputs], "run_dir": str(run_dir), "stats": stats,
            "documents": documents, "cpu_seconds": cpu, "wall_seconds": wall,
            "docs_per_s_per_core": documents / cpu,
            "bytes_read": next(s["bytes_out"] for s in stats["steps"] if s["name"] == "read"),
            "time_share": {s["name"]: s["seconds"] / cpu for s in stats["steps"]}}


def markdown(report: dict) -> str:
    ex = report["extraction"]
    lines = [f"Machine: {report['machine']}. Command: `{report['command']}`", "",
             f"### Extraction: {ex['pages']} pages of the article-extraction benchmark",
             "",
             "| extractor | precision | recall | F1 | empty | pages/s (one core, CPU time) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in ex["extractors"].items():
        lines.append(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | **{r['f1']:.3f}** | {r['empty']} "
                     f"| {r['pages_per_s']:,.0f} |")
    ours, theirs = ex["extractors"]["scratchlm main (resiliparse)"], ex["extractors"]["trafilatura"]
    lines += ["", f"Decoding the bytes (encoding detection) costs {ex['pages'] / ex['decode_seconds']:,.0f} pages/s "
              f"on top. Main-content F1 {ours['f1']:.3f} vs trafilatura {theirs['f1']:.3f}; speed "
              f"{ours['pages_per_s'] / theirs['pages_per_s']:.1f}x trafilatura."]
    if "minhash" in report:
        mh = report["minhash"]
        lines += ["", f"### MinHash-LSH vs datasketch ({mh['documents']:,} documents; details in dedup.md)", "",
                  "| stage | speed-up (CPU) |", "|---|---:|"]
        lines += [f"| {stage} | {v['cpu']:.2f}x |" for stage, v in mh["speedup"].items()]
        lines += ["", f"Clusters: {mh['clusters']['ours']} (ours), {mh['clusters']['datasketch']} (datasketch), "
                  f"identical: {mh['clusters']['identical']}; recall of brute-force pairs ours "
                  f"{mh['recall']['ours']:.3f}, datasketch {mh['recall']['datasketch']:.3f}."]
    e2e = report["end_to_end"]
    lines += ["", f"### End to end: {e2e['documents']:,} documents ({e2e['bytes_read'] / 1e6:.1f} MB) from "
              f"{e2e['stats']['inputs']} files, configs/data/webcrawl.toml, one core", "",
              f"{e2e['docs_per_s_per_core']:.1f} documents/s per core ({e2e['cpu_seconds']:.1f} CPU s, "
              f"{e2e['wall_seconds']:.1f} s wall).", "", format_stats(e2e["stats"])]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-minhash", action="store_true", help="leave out the datasketch comparison")
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "web-samples"))
    args = parser.parse_args()
    root = data_root()
    report = {"machine": f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}",
              "command": "python benchmarks/data.py " + " ".join(sys.argv[1:]),
              "load_average_before": os.getloadavg()[0]}
    report["extraction"] = extraction(root, args.repeats)
    if not args.skip_minhash:
        import dedup
        from scratchlm.data.minhash import MinHashConfig

        texts = dedup.plant(dedup.webcrawl_texts(root / "webcrawl") + dedup.wikipedia_texts(root))
        report["minhash"] = dedup.run(texts, MinHashConfig(), args.repeats, 1)
    report["end_to_end"] = end_to_end(root, Path(args.workdir))
    report["load_average_after"] = os.getloadavg()[0]
    write_text_atomic(RESULTS / "data.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(RESULTS / "data.md", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
