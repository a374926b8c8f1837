"""Exact line and document dedup; MinHash + LSH near-duplicate removal, checked against brute force,
the S-curve, Python big-integer arithmetic and datasketch."""

from __future__ import annotations

import functools
import gzip
import json
import random
import unicodedata
from collections import Counter

import numpy as np
import pytest

from scratchlm.data import dedup_exact, minhash
from scratchlm.data.dedup_exact import (
    ExactDocumentDedup,
    count_lines,
    dedup_lines_files,
    drop_repeated_lines,
    hash_segments,
    split_lines,
)
from scratchlm.data.document import Document
from scratchlm.data.minhash import (
    EMPTY,
    LSHBuckets,
    MinHashConfig,
    UnionFind,
    minhash_dedup_files,
    near_duplicates,
    normalize,
    shard_signatures,
    shingle_hashes,
    shingle_strings,
    signatures,
    signatures_parallel,
    verified_clusters,
)
from tests.conftest import shared_data

CFG = MinHashConfig()
TRICKY = "Héllo,  Wörld! ＡＢＣ e\u0301 x\u00a0y\x1cz 3½ ’quote’ — ﬁ _under_ \ud800 😀 𝐀𝐁 don't \t\n end"


def docs_of(texts: list[str]) -> list[Document]:
    return [Document(id=str(i), text=t) for i, t in enumerate(texts)]


@functools.cache
def string_shingles(text: str) -> frozenset[str]:
    return frozenset(shingle_strings(text, 5))


def jaccard_of_strings(a: str, b: str) -> float:
    """Reference Jaccard on Python sets of shingle strings (independent of our hashing)."""
    sa, sb = string_shingles(a), string_shingles(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 0.0


def edited(text: str, rate: float, rng: random.Random) -> str:
    """A copy with `rate` of its words replaced by other words of the same text, at scattered places.
    With 5-gram shingles each replaced word breaks up to 5 shingles: 1% gives Jaccard ~0.9, 5% ~0.6."""
    words = text.split()
    for k in rng.sample(range(len(words)), int(rate * len(words))):
        words[k] = rng.choice(words)
    return " ".join(words)


# --- real documents --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_texts() -> list[str]:
    """The CCNet WET documents, the fuzzy-duplicate fixture and the article-extraction gold texts (204)."""
    texts = []
    for name in ("cc_en_head-0091.jsonl.gz", "cc_en_head-0174.jsonl.gz"):
        with gzip.open(shared_data(f"webcrawl/wet_text/{name}"), "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    fixture = shared_data("webcrawl/dedup_fixtures/documents_with_fuzzy_duplicates")
    texts += [p.read_text(encoding="utf-8") for p in sorted(fixture.iterdir())]
    gold = json.loads(shared_data("webcrawl/article_extraction_benchmark/ground-truth.json").read_text("utf-8"))
    return texts + [page["articleBody"] for page in gold.values()]


def planted(real_texts: list[str], rates: tuple[float, ...], seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    """real_texts followed by one edited copy of each text of >= 50 words (edit rate cycling through
    `rates`); returns (texts, [(original, copy)])."""
    rng = random.Random(seed)
    texts, pairs = list(real_texts), []
    for i, text in enumerate(real_texts):
        if len(text.split()) >= 50:
            pairs.append((i, len(texts)))
            texts.append(edited(text, rates[len(pairs) % len(rates)], rng))
    return texts, pairs


def similar_pairs(texts: list[str], threshold: float) -> dict[tuple[int, int], float]:
    """Brute force: {pair: string-set Jaccard} for every pair at or above threshold, skipping the pairs
    whose set sizes alone rule it out (Jaccard <= smaller size / larger size)."""
    sizes = np.array([len(string_shingles(t)) for t in texts])
    found = {}
    for i in range(len(texts)):
        later = np.arange(i + 1, len(texts))
        fits = (sizes[later] >= threshold * sizes[i]) & (sizes[i] >= threshold * sizes[later]) & (sizes[later] > 0)
        for j in later[fits].tolist():
            sim = jaccard_of_strings(texts[i], texts[j])
            if sim >= threshold:
                found[i, j] = sim
    return found


# --- exact line dedup ------------------------------------------------------------------------------


def test_line_dedup_files_exact_output(tmp_path):
    files = {
        "a.txt": "header\nalpha one\ncommon line\nalpha two\n",
        "b.txt": "header\nbeta\ncommon line",  # the last line has no "\n": still the same line as above
        "c.txt": "header\n",  # every line repeated: an empty output
        "d.txt": "x\nx\nheader\r\nlast\n",  # "x" twice in one file goes too; "header\r\n" is another line
    }
    inputs = []
    for name, text in files.items():
        (tmp_path / "in").mkdir(exist_ok=True)
        inputs.append(tmp_path / "in" / name)
        inputs[-1].write_bytes(text.encode())
    outputs = dedup_lines_files(inputs, tmp_path / "out")
    assert [p.name for p in outputs] == list(files)
    got = {p.name: p.read_bytes().decode() for p in outputs}
    assert got == {"a.txt": "alpha one\nalpha two\n", "b.txt": "beta\n", "c.txt": "", "d.txt": "header\r\nlast\n"}
    with pytest.raises(ValueError, match="distinct names"):
        dedup_lines_files([inputs[0], inputs[0]], tmp_path / "out2")


def test_line_counts_are_counter_like_and_merge_across_shards():
    docs = docs_of(["a\nb\na\n", "b\nc", "", "a\n\n\n"])
    counts = count_lines(docs)
    lines = ["a\n", "b\n", "c\n", "c", "\n", "zzz\n"]
    assert [counts[line] for line in lines] == [3, 2, 1, 1, 2, 0]
    assert len(counts) == 4
    merged = count_lines(docs[:2]).merge(count_lines(docs[2:]))
    assert np.array_equal(merged.keys, counts.keys) and np.array_equal(merged.counts, counts.counts)
    kept = drop_repeated_lines(docs[1], counts)
    assert kept.text == "c" and kept.metadata["dedup_lines_removed"] == 1 and kept.id == "1"
    assert drop_repeated_lines(docs[3], counts) is None
    blank = Document(id="b", text="c\n\nb\n")  # "b" and "\n" are repeated; keep_blank keeps the blank line
    assert drop_repeated_lines(blank, counts).text == "c\n"
    assert drop_repeated_lines(blank, counts, keep_blank=True).text == "c\n\n"
    assert drop_repeated_lines(docs[3], counts, keep_blank=True) is None  # blank lines alone are no document


def test_line_counts_equal_python_counter_on_real_text(real_texts, monkeypatch):
    # Small batches, compaction and hashing steps: the streaming paths must give the same counts.
    monkeypatch.setattr(dedup_exact, "_BATCH_CHARS", 5_000)
    monkeypatch.setattr(dedup_exact, "_COMPACT_EVERY", 300)
    monkeypatch.setattr(dedup_exact, "_CHUNK", 1_000)
    texts = real_texts + real_texts[:30]  # every line of the first 30 documents at least twice
    counts = count_lines(docs_of(texts))
    reference = Counter(line.removesuffix("\n") for t in texts for line in split_lines(t))
    assert len(counts) == len(reference)
    for line, n in reference.items():
        assert counts[line + "\n"] == n
    for doc in docs_of(real_texts[25:40]):
        kept = drop_repeated_lines(doc, counts)
        expected = "".join(line for line in split_lines(doc.text) if reference[line.removesuffix("\n")] == 1)
        assert (kept.text if kept else "") == expected


def test_hash_segments_steps_agree(monkeypatch):
    rng = np.random.default_rng(0)
    values = rng.integers(1, 256, size=5_000, dtype=np.uint64).astype(np.uint8)
    starts = np.r_[0, np.sort(rng.choice(np.arange(1, 5_000), size=300, replace=False))]
    whole = hash_segments(values, starts)
    monkeypatch.setattr(dedup_exact, "_CHUNK", 64)  # many steps, some segments longer than a step
    assert np.array_equal(hash_segments(values, starts), whole)
    # equal segments hash equal wherever they are; distinct ones differ
    segments = [bytes(s) for s in np.split(values, starts[1:])]
    by_hash = {}
    for seg, h in zip(segments, whole.tolist()):
        assert by_hash.setdefault(h, seg) == seg
    assert len(set(whole.tolist())) == len(set(segments))


# --- exact document dedup --------------------------------------------------------------------------


def test_document_dedup_keeps_first_of_normalised_copies():
    texts = ["Caf\u00e9 au lait\n", "Cafe\u0301  au\tlait", "Café au lait!", "  Café au lait  ", "other"]
    dedup = ExactDocumentDedup()
    assert [d.id for d in dedup.filter(docs_of(texts))] == ["0", "2", "4"]
    assert len(dedup.seen) == 3


def test_document_dedup_shards_route_copies_together(real_texts):
    texts = real_texts + real_texts[::3] + [unicodedata.normalize("NFD", t) for t in real_texts[::5]]
    docs = docs_of(texts)
    single = ExactDocumentDedup()
    expected = [d.id for d in single.filter(docs)]
    shards = [ExactDocumentDedup() for _ in range(4)]
    kept = [d.id for d in docs if shards[ExactDocumentDedup.shard_of(d, 4)].is_new(d)]
    assert sorted(kept, key=int) == expected
    assert ExactDocumentDedup().merge(*shards).seen == single.seen


# --- MinHash: configuration, normalisation, shingles -----------------------------------------------


def test_config_validation():
    assert MinHashConfig(num_hashes=100, bands=20).rows == 5
    for bad in (dict(num_hashes=128, bands=10), dict(ngram=0), dict(threshold=0.0), dict(bands=0)):
        with pytest.raises(ValueError):
            MinHashConfig(**bad)
    with pytest.raises(TypeError):
        MinHashConfig(128)  # keyword-only


def test_normalize_examples():
    assert normalize("Héllo,  Wörld!\n") == "hello world"
    assert normalize("Don't  stop—now_ok ÀÉÎ") == "dont stopnow_ok aei"
    assert shingle_strings("a b c", 5) == {"a b c"}  # shorter than n: one shingle of all words
    assert shingle_strings("...", 5) == set() and len(shingle_hashes("...", 5)) == 0


def test_vectorised_words_equal_the_reference(real_texts):
    for text in real_texts + [TRICKY, "", "!!", "x"]:
        chars, starts = minhash._words(text)
        words = ["".join(map(chr, w.tolist())) for w in np.split(chars, starts[1:])] if len(starts) else []
        assert words == normalize(text).split()
        assert len(shingle_hashes(text, 5)) == len(shingle_strings(text, 5))


# --- MinHash: signatures ---------------------------------------------------------------------------


def test_multiply_add_kernel_equals_big_integers():
    """The uint64 arithmetic (wrapping mod 2^64) against Python integers, extreme values included."""
    top = (1 << 64) - 1
    a = np.array([0, 1, 2, top, top - 1, (1 << 63) + 12345, 0x1234_5678_9ABC_DEF1], dtype=np.uint64)
    b = np.array([0, top, top, 7, 1 << 63, top - 2, 0xFEDC_BA98_7654_3210], dtype=np.uint64)
    x = np.array([0, 1, 2, (1 << 32) - 1, (1 << 32) - 2, (1 << 31) + 5, 0xDEADBEEF], dtype=np.uint64)
    got = minhash._multiply_add(x, minhash._operands(a, b, 8), np.empty((len(a), 8), dtype=np.uint64))
    expected = [[(int(ai) * int(xj) + int(bi)) % (1 << 64) for xj in x] for ai, bi in zip(a, b)]
    assert got.tolist() == expected


def test_signatures_equal_big_integer_minimum(real_texts):
    texts = real_texts[:6] + ["", "two words"]
    sigs = signatures(docs_of(texts), CFG)
    assert sigs.shape == (8, 128) and sigs.dtype == np.uint64
    a, b = (v.tolist() for v in minhash._hash_functions(CFG.num_hashes, CFG.seed))
    for text, row in zip(texts, sigs):
        xs = [int(h) >> 32 for h in shingle_hashes(text, CFG.ngram)]
        expected = [min((ai * x + bi) % 2**64 >> 32 for x in xs) if xs else int(EMPTY) for ai, bi in zip(a, b)]
        assert row.tolist() == expected
    # batches of documents across kernel blocks: the same rows one document at a time
    assert np.array_equal(sigs, np.concatenate([signatures([d], CFG) for d in docs_of(texts)]))


def test_minhash_estimate_within_sampling_error(real_texts):
    """The fraction of equal signature values estimates Jaccard with std sqrt(J(1-J)/num_hashes)."""
    cfg = MinHashConfig(num_hashes=256, bands=32)
    rng = random.Random(1)
    long_texts = [t for t in real_texts if len(t.split()) >= 300][:40]
    errors, sigmas = [], []
    for k, text in enumerate(long_texts):
        copy = edited(text, (0.005, 0.01, 0.02, 0.04, 0.08)[k % 5], rng)
        true = jaccard_of_strings(text, copy)
        sa, sb = signatures(docs_of([text, copy]), cfg)
        sigma = np.sqrt(true * (1 - true) / cfg.num_hashes)
        errors.append(abs(float(np.mean(sa == sb)) - true))
        sigmas.append(sigma)
        assert errors[-1] <= 4 * sigma + 0.01
    assert np.mean(errors) <= 1.5 * np.mean(sigmas) * np.sqrt(2 / np.pi) + 0.005  # E|N(0, s)| = s sqrt(2/pi)


def test_signatures_parallel_equal_serial(real_texts):
    docs = docs_of(real_texts[:40])
    assert np.array_equal(signatures_parallel(docs, CFG, num_workers=2), signatures(docs, CFG))


# --- LSH -------------------------------------------------------------------------------------------


def test_lsh_recall_against_brute_force_and_verification(real_texts):
    texts, _ = planted(real_texts, rates=(0.0, 0.005, 0.01, 0.02, 0.05))
    keep, clusters = near_duplicates(docs_of(texts), CFG)
    cluster_of = {int(i): c for c, cluster in enumerate(clusters) for i in cluster}
    for i, j in similar_pairs(texts, CFG.threshold + 0.1):  # recall: every clear duplicate is found
        assert i in cluster_of and cluster_of.get(i) == cluster_of.get(j)
    for cluster in clusters:  # verification: clusters are connected by pairs at or above the threshold
        members = [int(i) for i in cluster]
        found = UnionFind(len(members))
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                if jaccard_of_strings(texts[members[a]], texts[members[b]]) >= CFG.threshold:
                    found.union(a, b)
        assert len(found.groups()) == 1
        assert members == sorted(members) and members[0] in map(int, keep) and not set(members[1:]) & set(keep)
    assert len(keep) == len(texts) - sum(len(c) - 1 for c in clusters)


def test_candidate_probability_follows_the_s_curve(real_texts):
    """Over seeds and planted pairs of many similarities, the candidate fraction per similarity bin
    matches the mean of 1 - (1 - s^r)^b within sampling error."""
    seeds = 4
    texts, pairs = planted(real_texts, rates=(0.02, 0.03, 0.04, 0.05, 0.06, 0.08))
    sims = np.array([jaccard_of_strings(texts[i], texts[j]) for i, j in pairs])
    hit, expected = [], []
    for seed in range(seeds):
        cfg = MinHashConfig(seed=seed)
        buckets = LSHBuckets.from_signatures(signatures(docs_of(texts), cfg), cfg)
        candidates = set(map(tuple, buckets.candidate_pairs().tolist()))
        hit += [pair in candidates for pair in pairs]
        expected += list(cfg.candidate_probability(sims))
    hit, expected, s = np.array(hit), np.array(expected), np.tile(sims, seeds)
    checked = 0
    for lo, hi in [(0.4, 0.55), (0.55, 0.65), (0.65, 0.75), (0.75, 0.85), (0.85, 1.01)]:
        inside = (s >= lo) & (s < hi)
        if inside.sum() < 30:
            continue
        p = expected[inside]
        sigma = np.sqrt(np.sum(p * (1 - p))) / inside.sum()
        assert abs(hit[inside].mean() - p.mean()) <= 4 * sigma + 0.03, (lo, hi, hit[inside].mean(), p.mean())
        checked += 1
    assert checked >= 3


def test_candidate_pairs_from_buckets():
    keys = np.array([[5, 1], [5, 2], [7, 2], [5, 3], [9, 9]], dtype=np.uint64)
    buckets = LSHBuckets(np.array([10, 11, 12, 13, 14]), keys)
    assert buckets.candidate_pairs().tolist() == [[10, 11], [10, 13], [11, 12], [11, 13]]


def test_sharded_buckets_merge_to_the_unsharded_candidates(real_texts):
    texts, _ = planted(real_texts[:80], rates=(0.0, 0.01))
    whole = LSHBuckets.from_signatures(signatures(docs_of(texts), CFG), CFG).candidate_pairs()
    bounds = [0, 30, 31, 75, len(texts)]
    parts = [
        LSHBuckets.from_signatures(shard_signatures(texts[a:b], CFG), CFG, ids=np.arange(a, b))
        for a, b in zip(bounds, bounds[1:])
    ]
    assert np.array_equal(LSHBuckets.merge(parts).candidate_pairs(), whole) and len(whole) > 0


# --- clusters --------------------------------------------------------------------------------------


def test_union_find():
    uf = UnionFind(6)
    assert uf.union(0, 1) and uf.union(2, 3) and uf.union(1, 3) and not uf.union(0, 2)
    assert uf.groups() == [[0, 1, 2, 3], [4], [5]]
    chain = UnionFind(1000)
    for i in range(999):
        chain.union(i, i + 1)
    assert chain.find(0) == chain.find(999) and max(chain.rank) <= 10  # union by rank keeps trees shallow


def test_chain_of_near_duplicates_is_one_cluster(real_texts):
    """a ~ b and b ~ c but not a ~ c: union-find still puts all three together; a is kept."""
    words = max(real_texts, key=len).split()[:400]
    a = " ".join(words)
    block_b, block_c = [f"zzb{i}" for i in range(26)], [f"zzc{i}" for i in range(26)]  # each breaks 30 shingles
    b = " ".join(words[:60] + block_b + words[86:])
    c = " ".join(words[:60] + block_b + words[86:300] + block_c + words[326:])
    assert jaccard_of_strings(a, b) >= 0.8 and jaccard_of_strings(b, c) >= 0.8 > jaccard_of_strings(a, c)
    docs = [Document(id=i, text=t) for i, t in [("a", a), ("x", real_texts[0]), ("c", c), ("b", b)]]
    keep, clusters = near_duplicates(docs, CFG)
    assert clusters == [["a", "c", "b"]] and keep == ["a", "x"]


def test_short_and_empty_documents():
    docs = docs_of(["", "...", "Hello there, world", "hello there world!", "hello there"])
    sigs = signatures(docs, CFG)
    assert (sigs[:2] == EMPTY).all() and (sigs[2:] < 2**32).all()
    keep, clusters = near_duplicates(docs, CFG)
    assert clusters == [["2", "3"]] and keep == ["0", "1", "2", "4"]
    with pytest.raises(ValueError, match="unique"):
        near_duplicates([docs[0], docs[0]], CFG)


def test_fuzzy_duplicate_fixture(tmp_path):
    """pytorch's BSD licence vs the Rails and React MIT licences: the two MIT texts (Jaccard 0.92) are one
    cluster, so the first of them (rails, in sorted input order) and pytorch remain."""
    folder = shared_data("webcrawl/dedup_fixtures/documents_with_fuzzy_duplicates")
    inputs = sorted(folder.iterdir())
    outputs = minhash_dedup_files(inputs, tmp_path, CFG)
    assert [p.name for p in outputs] == ["pytorch_license.txt", "rails_mit_license.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pytorch_license.txt", "rails_mit_license.txt"]
    assert all((tmp_path / p.name).read_bytes() == p.read_bytes() for p in inputs[:2])
    # the same with CS336's parameters (100 hashes, 10 bands)
    cs336 = MinHashConfig(num_hashes=100, bands=10, ngram=5, threshold=0.8)
    assert [p.name for p in minhash_dedup_files(inputs, tmp_path / "cs336", cs336)] == [p.name for p in outputs]


# --- datasketch ------------------------------------------------------------------------------------


def test_same_clusters_as_datasketch(real_texts):
    datasketch = pytest.importorskip("datasketch")
    texts, _ = planted(real_texts, rates=(0.0, 0.002, 0.005, 0.05, 0.1))
    # No pair near the threshold, where either LSH may miss a true duplicate by chance (P(miss) at s=0.9 is 1e-5).
    assert min(similar_pairs(texts, CFG.threshold).values()) >= CFG.threshold + 0.1
    ours = near_duplicates(docs_of(texts), CFG)[1]

    shingles = [[s.encode("utf-8", "surrogatepass") for s in shingle_strings(t, CFG.ngram)] for t in texts]
    sketches = datasketch.MinHash.bulk(shingles, num_perm=CFG.num_hashes)
    lsh = datasketch.MinHashLSH(num_perm=CFG.num_hashes, params=(CFG.bands, CFG.rows))
    filled = [i for i, s in enumerate(shingles) if s]
    for i in filled:
        lsh.insert(i, sketches[i])
    candidates = sorted({(min(i, j), max(i, j)) for i in filled for j in lsh.query(sketches[i]) if i != j})
    theirs = verified_clusters(texts, np.array(candidates).reshape(-1, 2), CFG)
    assert ours == [[str(i) for i in c] for c in theirs] and len(ours) > 50
