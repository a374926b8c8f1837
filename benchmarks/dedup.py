"""MinHash-LSH benchmark: scratchlm.data.minhash vs datasketch (MinHash + MinHashLSH) on the same shingles.

    python benchmarks/dedup.py [--repeats 3] [--workers 2]

Documents: every real text document under shared/data/webcrawl (CCNet WET text, the article-extraction
gold texts, the fixtures) and pretrain/wikipedia-valid split on `<|endoftext|>` lines, plus planted
near-duplicates (copies of a quarter of them with 0-10% of their words replaced). Both sides get the
same shingles (our normalised word 5-grams; datasketch hashes their UTF-8 bytes), the same num_perm
and the same bands x rows, and their candidate pairs go through the same true-Jaccard verification and
union-find, so the clusters differ only where the two LSH indexes propose different candidates.
Timings are the best of --repeats interleaved rounds; writes benchmarks/results/dedup.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import lzma
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
from datasketch import MinHash, MinHashLSH

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results"

from scratchlm.atomic import write_text_atomic  # noqa: E402
from scratchlm.data.document import Document  # noqa: E402
from scratchlm.data.minhash import (  # noqa: E402
    LSHBuckets,
    MinHashConfig,
    jaccard,
    shingle_hashes,
    shingle_strings,
    signatures,
    signatures_parallel,
    verified_clusters,
)

EDIT_RATES = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)


def data_dir() -> Path:
    return Path(os.environ.get("SCRATCHLM_DATA", ROOT.parent / "shared" / "data"))


def webcrawl_texts(root: Path) -> list[str]:
    """Every real plain-text document under webcrawl/ (HTML pages and WARC responses are not text)."""
    texts = []
    for path in sorted((root / "wet_text").glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    gold = json.loads((root / "article_extraction_benchmark" / "ground-truth.json").read_text(encoding="utf-8"))
    texts += [page["articleBody"] for page in gold.values()]
    for path in sorted(root.glob("*_fixtures/**/*.txt")):
        texts.append(path.read_text(encoding="utf-8"))
    for path in sorted((root / "warc").glob("*.wet.gz")):
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            records = f.read().split("WARC/1.0\r\n")
        texts += [r.split("\r\n\r\n", 1)[1] for r in records if "WARC-Type: conversion" in r]
    return texts


def wikipedia_texts(root: Path) -> list[str]:
    with lzma.open(root / "pretrain" / "wikipedia-valid.txt.xz", "rt", encoding="utf-8") as f:
        return f.read().split("\n<|endoftext|>\n")


def plant(texts: list[str], seed: int = 0) -> list[str]:
    """texts plus, for every 4th one, a copy with a fraction (from EDIT_RATES) of its words replaced by
    other words of the same text, inserted at a random later position."""
    rng = random.Random(seed)
    out = list(texts)
    for i, text in enumerate(texts[::4]):
        words = text.split()
        if len(words) < 10:
            continue
        for k in rng.sample(range(len(words)), int(EDIT_RATES[i % len(EDIT_RATES)] * len(words))):
            words[k] = rng.choice(words)
        out.insert(rng.randrange(out.index(text) + 1, len(out) + 1), " ".join(words))
    return out


def timed(fn, *args) -> tuple[object, dict[str, float]]:
    """(fn(*args), {"wall": seconds, "cpu": CPU seconds of this process (workers' not included)})."""
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0}


def best_interleaved(repeats: int, stages: dict[tuple[str, str], tuple]) -> dict[str, dict[str, dict[str, float]]]:
    """Best wall and best CPU time of each stage over `repeats` rounds, each round running every stage once,
    so that both sides meet the same load on a machine shared with other jobs."""
    best: dict[str, dict[str, dict[str, float]]] = {}
    for _ in range(repeats):
        for (side, stage), (fn, *args) in stages.items():
            _, t = timed(fn, *args)
            old = best.setdefault(side, {}).setdefault(stage, t)
            best[side][stage] = {k: min(old[k], t[k]) for k in t}
    return best


def ours_shingles(texts: list[str], cfg: MinHashConfig) -> list[np.ndarray]:
    return [shingle_hashes(t, cfg.ngram) for t in texts]


def ours_candidates(docs: list[Document], cfg: MinHashConfig, sigs: np.ndarray) -> set[tuple[int, int]]:
    return set(map(tuple, LSHBuckets.from_signatures(sigs, cfg).candidate_pairs().tolist()))


def datasketch_shingles(texts: list[str], cfg: MinHashConfig) -> list[list[bytes]]:
    return [[s.encode("utf-8", "surrogatepass") for s in shingle_strings(t, cfg.ngram)] for t in texts]


def datasketch_minhashes(texts: list[str], cfg: MinHashConfig) -> list[MinHash]:
    return MinHash.bulk(datasketch_shingles(texts, cfg), num_perm=cfg.num_hashes, seed=cfg.seed)


def datasketch_legacy_minhashes(texts: list[str], cfg: MinHashConfig) -> list[MinHash]:
    """datasketch's pre-2.0 scheme, (a*x + b) mod (2^61 - 1) with uint64 `%`, then 32 bits kept."""
    shingles = datasketch_shingles(texts, cfg)
    return MinHash.bulk(shingles, num_perm=cfg.num_hashes, seed=cfg.seed, scheme="legacy")


def datasketch_candidates(minhashes: list[MinHash], cfg: MinHashConfig) -> set[tuple[int, int]]:
    lsh = MinHashLSH(num_perm=cfg.num_hashes, params=(cfg.bands, cfg.rows))
    filled = [i for i, m in enumerate(minhashes) if not m.is_empty()]  # as ours: empty documents left out
    for i in filled:
        lsh.insert(i, minhashes[i])
    return {(min(i, j), max(i, j)) for i in filled for j in lsh.query(minhashes[i]) if i != j}


def cluster_pairs(texts: list[str], candidates: set[tuple[int, int]], cfg: MinHashConfig):
    clusters = verified_clusters(texts, np.array(sorted(candidates), dtype=np.int64).reshape(-1, 2), cfg)
    pairs = {(c[a], c[b]) for c in clusters for a in range(len(c)) for b in range(a + 1, len(c))}
    return clusters, pairs


def true_duplicate_pairs(texts: list[str], cfg: MinHashConfig) -> set[tuple[int, int]]:
    """Brute force over all pairs, skipping those whose set sizes alone rule out the threshold
    (Jaccard <= min/max of the sizes)."""
    sets = [shingle_hashes(t, cfg.ngram) for t in texts]
    sizes = np.array([len(s) for s in sets], dtype=np.float64)
    found = set()
    for i in range(len(sets)):
        later = np.arange(i + 1, len(sets))
        fits = (sizes[later] >= cfg.threshold * sizes[i]) & (sizes[i] >= cfg.threshold * sizes[later])
        found |= {(i, int(j)) for j in later[fits] if jaccard(sets[i], sets[j]) >= cfg.threshold}
    return found


def agreement(a: set, b: set) -> dict:
    return {"both": len(a & b), "only_ours": len(a - b), "only_datasketch": len(b - a), "either": len(a | b)}


def run(texts: list[str], cfg: MinHashConfig, repeats: int, workers: int) -> dict:
    docs = [Document(id=str(i), text=t) for i, t in enumerate(texts)]
    load_before = os.getloadavg()[0]
    sets = ours_shingles(texts, cfg)
    sigs = signatures(docs, cfg)
    ours_cand = ours_candidates(docs, cfg, sigs)
    ours_clusters, ours_pairs = cluster_pairs(texts, ours_cand, cfg)
    minhashes = datasketch_minhashes(texts, cfg)
    ds_cand = datasketch_candidates(minhashes, cfg)
    ds_clusters, ds_pairs = cluster_pairs(texts, ds_cand, cfg)
    times = best_interleaved(
        repeats,
        {
            ("ours", "shingles"): (ours_shingles, texts, cfg),
            ("datasketch", "shingles"): (datasketch_shingles, texts, cfg),
            ("ours", "signatures"): (signatures, docs, cfg),
            ("datasketch", "signatures"): (datasketch_minhashes, texts, cfg),
            ("datasketch", "signatures_legacy"): (datasketch_legacy_minhashes, texts, cfg),
            ("ours", "signatures_parallel"): (signatures_parallel, docs, cfg, workers),
            ("ours", "lsh"): (ours_candidates, docs, cfg, sigs),
            ("datasketch", "lsh"): (datasketch_candidates, minhashes, cfg),
            ("ours", "verify"): (cluster_pairs, texts, ours_cand, cfg),
            ("datasketch", "verify"): (cluster_pairs, texts, ds_cand, cfg),
        },
    )
    ours, theirs = times["ours"], times["datasketch"]
    for side in (ours, theirs):
        side["total"] = {k: side["signatures"][k] + side["lsh"][k] + side["verify"][k] for k in ("wall", "cpu")}
    truth = true_duplicate_pairs(texts, cfg)
    disagreements = sorted(round(jaccard(sets[i], sets[j]), 3) for i, j in ours_pairs ^ ds_pairs)
    return {
        "documents": len(docs),
        "shingles": int(sum(len(s) for s in sets)),
        "config": dataclasses.asdict(cfg) | {"rows": cfg.rows},
        "seconds": times,
        "docs_per_s": {
            side: {stage: round(len(docs) / t["wall"], 1) for stage, t in stages.items()}
            for side, stages in times.items()
        },
        "speedup": {
            stage: {k: theirs[stage][k] / ours[stage][k] for k in ("wall", "cpu")}
            for stage in ("shingles", "signatures", "lsh", "total")
        },
        "workers": workers,
        "load_average": [load_before, os.getloadavg()[0]],
        "candidate_pairs": agreement(ours_cand, ds_cand),
        "duplicate_pairs": agreement(ours_pairs, ds_pairs),
        "jaccard_of_pairs_found_by_one_side": disagreements,
        "true_duplicate_pairs": len(truth),
        "recall": {
            "ours": len(ours_pairs & truth) / max(len(truth), 1),
            "datasketch": len(ds_pairs & truth) / max(len(truth), 1),
        },
        "clusters": {
            "ours": len(ours_clusters),
            "datasketch": len(ds_clusters),
            "identical": sorted(ours_clusters) == sorted(ds_clusters),
        },
    }


def markdown(report: dict) -> str:
    s, r, x, cfg = report["seconds"], report["docs_per_s"], report["speedup"], report["config"]
    lines = [
        f"Machine: {report['machine']}. Command: `{report['command']}`",
        "",
        f"{report['documents']:,} documents ({report['shingles']:,} distinct shingles): {report['corpus']}. "
        f"num_hashes {cfg['num_hashes']}, {cfg['bands']} bands x {cfg['rows']} rows, word {cfg['ngram']}-grams, "
        f"threshold {cfg['threshold']}. Best of {report['repeats']} interleaved rounds; load average "
        f"{report['load_average'][0]:.1f} before, {report['load_average'][1]:.1f} after (a shared machine).",
        "",
        "| stage | scratchlm s (CPU s) | datasketch s (CPU s) | scratchlm docs/s | datasketch docs/s "
        "| speed-up wall (CPU) |",
        "|---|---|---|---|---|---|",
    ]
    names = [
        ("shingles", "of which shingling (same normalisation)"),
        ("signatures", "shingles + signatures"),
        ("lsh", "LSH candidate pairs"),
        ("verify", "verify + union-find (same code)"),
        ("total", "total"),
    ]
    for stage, name in names:
        ours, theirs = s["ours"][stage], s["datasketch"][stage]
        speed = f"**{x[stage]['wall']:.2f}x** ({x[stage]['cpu']:.2f}x)" if stage in x else ""
        lines.append(
            f"| {name} | {ours['wall']:.3f} ({ours['cpu']:.3f}) | {theirs['wall']:.3f} ({theirs['cpu']:.3f}) | "
            f"{r['ours'][stage]:,.0f} | {r['datasketch'][stage]:,.0f} | {speed} |"
        )
    par, legacy, sig = (
        s["ours"]["signatures_parallel"]["wall"],
        s["datasketch"]["signatures_legacy"],
        s["ours"]["signatures"],
    )
    lines += [
        f"| shingles + signatures, {report['workers']} spawned processes | {par:.3f} | | "
        f"{r['ours']['signatures_parallel']:,.0f} | | {s['datasketch']['signatures']['wall'] / par:.2f}x |",
        f"| shingles + signatures, datasketch scheme='legacy' (a*x+b mod 2^61-1) | | "
        f"{legacy['wall']:.3f} ({legacy['cpu']:.3f}) | | {r['datasketch']['signatures_legacy']:,.0f} | "
        f"{legacy['wall'] / sig['wall']:.2f}x ({legacy['cpu'] / sig['cpu']:.2f}x) |",
        "",
        "| agreement | both | only scratchlm | only datasketch |",
        "|---|---|---|---|",
    ]
    for key, name in [
        ("candidate_pairs", "LSH candidate pairs"),
        ("duplicate_pairs", "pairs in one duplicate cluster"),
    ]:
        a = report[key]
        lines.append(f"| {name} | {a['both']:,} | {a['only_ours']:,} | {a['only_datasketch']:,} |")
    c, rec = report["clusters"], report["recall"]
    lines += [
        "",
        f"Clusters: {c['ours']} (scratchlm), {c['datasketch']} (datasketch), identical: {c['identical']}. "
        f"Brute force finds {report['true_duplicate_pairs']} pairs with Jaccard >= {cfg['threshold']}; recall "
        f"(pairs in one cluster) scratchlm {rec['ours']:.3f}, datasketch {rec['datasketch']:.3f}. Jaccard of the "
        f"duplicate pairs only one side found: {report['jaccard_of_pairs_found_by_one_side']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    root = data_dir()
    web, wiki = webcrawl_texts(root / "webcrawl"), wikipedia_texts(root)
    texts = plant(web + wiki)
    report = run(texts, MinHashConfig(), args.repeats, args.workers)
    report["corpus"] = (
        f"{len(web)} webcrawl + {len(wiki)} wikipedia-valid documents + {len(texts) - len(web) - len(wiki)} planted "
        f"near-duplicates (edit rates {', '.join(f'{r:.1%}' for r in EDIT_RATES)})"
    )
    report["repeats"] = args.repeats
    report["machine"] = f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}"
    report["command"] = "python benchmarks/dedup.py " + " ".join(sys.argv[1:])
    write_text_atomic(RESULTS / "dedup.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(RESULTS / "dedup.md", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
