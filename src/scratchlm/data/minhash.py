"""Near-duplicate removal with MinHash signatures and LSH banding, verified by true Jaccard similarity.

Pipeline (docs/dedup.md has the maths): normalise each document and cut it into word n-gram shingles,
hashed once to 64 bits; the signature holds, for each of `num_hashes` strongly universal hash functions
h(x) = (a*x + b mod 2^64) >> 32 of the hash's top 32 bits x, the minimum over the document's shingles,
so two signatures agree at a position with probability ~Jaccard(A, B); LSH cuts signatures into `bands`
bands of `rows` rows, and pairs that agree on all rows of some band are candidates, with probability
1 - (1 - s^rows)^bands; a candidate pair counts only if the true Jaccard of its shingle sets reaches the
threshold; union-find turns those pairs into clusters, and each cluster keeps its first document in input
order.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import multiprocessing
import re
import unicodedata
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from scratchlm.atomic import write_text_atomic
from scratchlm.data.dedup_exact import _check_unique_names, _read, fmix64, hash_segments
from scratchlm.data.document import Document

EMPTY = np.uint64(2**64 - 1)  # signature value of a document without shingles; real values are < 2^32
_NGRAM_MULT = np.uint64(0xBF58476D1CE4E5B9)
_BAND_MULT = np.uint64(0x94D049BB133111EB)
_BLOCK = 512  # shingles per kernel step: 256-1024 measure alike; less pays NumPy's per-call cost, more leaves cache
_SIG_BATCH = 1 << 16  # shingles per signature batch (bounds memory when streaming documents)
_DROP, _SPACE, _WORD = 0, 1, 2
_NOT_WORD_OR_SPACE = re.compile(r"[^\w\s]+")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MinHashConfig:
    """num_hashes signature rows cut into `bands` bands of `rows` rows; word `ngram` shingles; pairs with
    Jaccard >= threshold are duplicates; `seed` picks the hash functions."""

    num_hashes: int = 128
    bands: int = 16
    ngram: int = 5
    threshold: float = 0.8
    seed: int = 0

    def __post_init__(self):
        if self.num_hashes < 1 or self.bands < 1 or self.num_hashes % self.bands:
            raise ValueError(f"bands ({self.bands}) must divide num_hashes ({self.num_hashes}), both >= 1")
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {self.ngram}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")

    @property
    def rows(self) -> int:
        return self.num_hashes // self.bands

    def candidate_probability(self, s: float | np.ndarray) -> float | np.ndarray:
        """P[a pair with Jaccard s shares at least one band] = 1 - (1 - s^rows)^bands: the LSH S-curve."""
        return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** self.rows) ** self.bands


# ---------------------------------------------------------------------------------------------------
# Normalisation and shingles


def normalize(text: str) -> str:
    """Lowercase, NFD, drop every character that is neither a word character nor whitespace (punctuation,
    symbols, and the combining accents NFD split off), collapse whitespace: "Héllo,  Wörld!" -> "hello world".

    The readable definition; `shingle_hashes` computes the same words with NumPy lookups."""
    return " ".join(_NOT_WORD_OR_SPACE.sub("", unicodedata.normalize("NFD", text.lower())).split())


def shingle_strings(text: str, ngram: int) -> set[str]:
    """The document's shingles: its normalised word n-grams; a document with fewer than `ngram` words is
    one shingle of all of them (so short copies still match), one without words has none."""
    words = normalize(text).split()
    n = min(ngram, len(words))
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)} if words else set()


def _char_class(c: str) -> int:
    """Python's `re` semantics: \\w is str.isalnum() or "_", \\s is str.isspace()."""
    if c.isalnum() or c == "_":
        return _WORD
    return _SPACE if c.isspace() else _DROP


@functools.cache
def _bmp_classes() -> np.ndarray:
    """(65536,) uint8 class of every Basic Multilingual Plane code point (computed once per process)."""
    return np.array([_char_class(chr(cp)) for cp in range(0x10000)], dtype=np.uint8)


def _classes(cps: np.ndarray) -> np.ndarray:
    """(L,) uint8 classes of code points (L,); the rare ones above U+FFFF are classified one by one."""
    table = _bmp_classes()
    if cps.dtype == np.uint8 or cps.max(initial=0) <= 0xFFFF:
        return table[cps]
    out = table[np.minimum(cps, 0xFFFF)]
    astral = cps > 0xFFFF
    distinct, inverse = np.unique(cps[astral], return_inverse=True)
    out[astral] = np.array([_char_class(chr(cp)) for cp in distinct.tolist()], dtype=np.uint8)[inverse]
    return out


def _words(text: str) -> tuple[np.ndarray, np.ndarray]:
    """The normalised words as (chars (L,) code points of all words back to back, starts (n_words,))."""
    text = text.lower()
    if text.isascii():  # NFD is the identity on ASCII; one byte per code point
        cps = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    else:
        cps = np.frombuffer(unicodedata.normalize("NFD", text).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    classes = _classes(cps)
    kept = classes != _DROP  # dropped characters join their neighbours: "don't" -> "dont"
    cps, is_word = cps[kept], classes[kept] == _WORD
    starts_word = is_word.copy()  # (L',) a word character after a space (or first)
    starts_word[1:] &= ~is_word[:-1]
    return cps[is_word], np.flatnonzero(starts_word[is_word])


def _shingle_hash_values(text: str, ngram: int) -> np.ndarray:
    """(count,) uint64 hashes of the document's word n-grams in text order, repeats included.

    Each word is hashed once (hash_segments over its code points); an n-gram's hash is
    fmix64(sum_k word_{i+k} * M_k) with odd multipliers M_k, computed for all i at once (n array ops)."""
    chars, starts = _words(text)
    if not len(starts):
        return np.empty(0, dtype=np.uint64)
    words = hash_segments(chars, starts)  # (n_words,)
    n = min(ngram, len(words))
    count = len(words) - n + 1
    mults = fmix64(np.arange(1, n + 1, dtype=np.uint64) * _NGRAM_MULT) | np.uint64(1)  # (n,)
    acc = words[:count] * mults[0]
    for k in range(1, n):
        acc += words[k : k + count] * mults[k]
    return fmix64(acc)


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """(n_shingles,) sorted distinct uint64 hashes of shingle_strings(text, ngram)."""
    values = np.sort(_shingle_hash_values(text, ngram))  # sort + drop repeats: faster than np.unique here
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


# ---------------------------------------------------------------------------------------------------
# Signatures


@functools.lru_cache(maxsize=8)
def _hash_functions(num_hashes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), each (num_hashes,) uint64 drawn uniformly from [0, 2^64): h_i(x) = ((a_i*x + b_i) mod 2^64) >> 32."""
    rng = np.random.default_rng(seed)
    return tuple(rng.integers(0, 2**64, size=num_hashes, dtype=np.uint64, endpoint=False) for _ in range(2))


def _operands(a: np.ndarray, b: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """a, b repeated to (num_hashes, width). Whole arrays because NumPy multiplies (H, width) by (width,)
    ~2.5x faster than (H, 1) by (width,)."""
    return tuple(np.repeat(c[:, None], width, axis=1) for c in (a, b))


def _multiply_add(x: np.ndarray, operands: tuple, buf: np.ndarray) -> np.ndarray:
    """(num_hashes, m) a_i*x_j + b_i mod 2^64 for x (m,) < 2^32: h_i(x_j) before its final `>> 32`.

    Dietzfelbinger's multiply-add-shift: for 32-bit keys and a, b uniform in [0, 2^64), the top 32 bits
    of a*x + b mod 2^64 are a strongly universal hash to 32 bits. 2 array operations per (function,
    shingle); the shift commutes with the minimum (it is monotone), so _signature_rows shifts only the
    minima. docs/dedup.md has the reasoning, a test the big-integer check."""
    a, b = (op[:, : len(x)] for op in operands)
    out = buf[:, : len(x)]
    np.multiply(a, x, out=out)
    out += b
    return out


def _signature_rows(shingle_sets: Sequence[np.ndarray], cfg: MinHashConfig) -> np.ndarray:
    """(n, num_hashes) uint64 MinHash signatures of n shingle-hash arrays, values < 2^32 (EMPTY rows for
    empty sets).

    Shingles of all documents go through the kernel back to back, _BLOCK at a time, and
    np.minimum.reduceat takes the minimum of each document's part of a block."""
    operands = _operands(*_hash_functions(cfg.num_hashes, cfg.seed), _BLOCK)
    lengths = np.array([len(s) for s in shingle_sets], dtype=np.int64)
    filled = np.flatnonzero(lengths)  # (k,)
    sig = np.full((cfg.num_hashes, len(shingle_sets)), EMPTY)
    if not len(filled):
        return sig.T.copy()
    # The top 32 bits of the 64-bit shingle hash are the hash functions' input (docs/dedup.md).
    x = np.concatenate([shingle_sets[i] for i in filled]) >> np.uint64(32)  # (M,)
    offsets = np.concatenate(([0], np.cumsum(lengths[filled])))  # (k+1,) document i is x[off[i]:off[i+1]]
    mins = np.full((cfg.num_hashes, len(filled)), EMPTY)  # (H, k)
    buf = np.empty((cfg.num_hashes, _BLOCK), dtype=np.uint64)
    for lo in range(0, len(x), _BLOCK):
        hi = min(lo + _BLOCK, len(x))
        d0 = np.searchsorted(offsets, lo, side="right") - 1  # documents d0..d1-1 overlap [lo, hi)
        d1 = np.searchsorted(offsets, hi, side="left")
        values = _multiply_add(x[lo:hi], operands, buf)  # (H, hi-lo)
        block_mins = np.minimum.reduceat(values, np.maximum(offsets[d0:d1], lo) - lo, axis=1)  # (H, d1-d0)
        np.minimum(mins[:, d0:d1], block_mins, out=mins[:, d0:d1])
    sig[:, filled] = mins >> np.uint64(32)
    return sig.T.copy()


def shard_signatures(texts: Iterable[str], cfg: MinHashConfig) -> np.ndarray:
    """(n, num_hashes) signatures of one shard of texts: what each worker of signatures_parallel runs."""
    parts, batch, size = [], [], 0
    for text in texts:  # a minimum needs neither sorted nor distinct shingles: skip shingle_hashes' sort
        batch.append(_shingle_hash_values(text, cfg.ngram))
        size += len(batch[-1])
        if size >= _SIG_BATCH:
            parts.append(_signature_rows(batch, cfg))
            batch, size = [], 0
    parts.append(_signature_rows(batch, cfg))
    return np.concatenate(parts)


def signatures(docs: Iterable[Document], cfg: MinHashConfig) -> np.ndarray:
    """(n_docs, num_hashes) uint64 MinHash signatures; row of EMPTY for a document without words."""
    return shard_signatures((doc.text for doc in docs), cfg)


def _balanced_chunks(texts: list[str], count: int) -> list[list[str]]:
    """Consecutive chunks of about equal total length (a book and a tweet are not equal work)."""
    bounds = np.cumsum([len(t) for t in texts])
    cuts = np.searchsorted(bounds, np.linspace(0, bounds[-1], count + 1)[1:-1], side="right")
    edges = [0, *sorted(set(cuts.tolist()) - {0, len(texts)}), len(texts)]
    return [texts[a:b] for a, b in zip(edges, edges[1:])]


def signatures_parallel(docs: Iterable[Document], cfg: MinHashConfig, num_workers: int) -> np.ndarray:
    """signatures(docs, cfg), computed by `num_workers` spawned processes over chunks of about equal size
    (4 per worker, so one slow chunk does not idle the others); identical output. As with any spawn pool,
    a script calling it needs the `if __name__ == "__main__":` guard."""
    texts = [doc.text for doc in docs]
    if num_workers <= 1 or len(texts) < 2:
        return shard_signatures(texts, cfg)
    chunks = _balanced_chunks(texts, 4 * num_workers)
    with ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return np.concatenate(list(pool.map(shard_signatures, chunks, itertools.repeat(cfg))))


# ---------------------------------------------------------------------------------------------------
# LSH


def band_keys(sigs: np.ndarray, cfg: MinHashConfig) -> np.ndarray:
    """(n, bands) uint64: one hash of each band's `rows` signature values. Equal bands give equal keys;
    different bands collide with probability 2^-64, and a false candidate costs only a verification."""
    mults = fmix64(np.arange(1, cfg.rows + 1, dtype=np.uint64) * _BAND_MULT) | np.uint64(1)  # (rows,)
    rows = sigs.reshape(len(sigs), cfg.bands, cfg.rows)  # (n, bands, rows)
    return fmix64((rows * mults).sum(axis=2, dtype=np.uint64))


def _pairs_sharing_key(keys: np.ndarray) -> np.ndarray:
    """(m, 2) positions (i, j) with keys[i] == keys[j], i != j, each unordered pair once; keys (n,).

    Sort, find runs of equal keys, and emit for every element its pairs with the later ones of its run,
    all with array operations (a run of g elements gives g(g-1)/2 pairs)."""
    n = len(keys)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    new_run = np.r_[True, ordered[1:] != ordered[:-1]]  # (n,)
    run_start = np.flatnonzero(new_run)
    run_end = np.r_[run_start[1:], n][np.cumsum(new_run) - 1]  # (n,) end of each element's run
    later = run_end - 1 - np.arange(n)  # (n,) partners after each element
    left = np.repeat(np.arange(n), later)  # (m,)
    right = left + 1 + np.arange(len(left)) - np.repeat(np.cumsum(later) - later, later)
    return np.stack([order[left], order[right]], axis=1)


@dataclasses.dataclass(frozen=True)
class LSHBuckets:
    """Band keys of a set of documents: `ids` (n,) int64 document numbers, `keys` (n, bands) uint64.

    Shards compute theirs independently (with global ids); `merge` concatenates them, and candidate
    pairs of the merged buckets are exactly those of one index over all documents."""

    ids: np.ndarray
    keys: np.ndarray

    @classmethod
    def from_signatures(cls, sigs: np.ndarray, cfg: MinHashConfig, ids: np.ndarray | None = None) -> LSHBuckets:
        """Buckets of documents with signatures (n, num_hashes); `ids` defaults to 0..n-1. Documents without
        shingles are left out: every empty set has the same signature, and nothing is similar to nothing."""
        ids = np.arange(len(sigs), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        filled = sigs[:, 0] != EMPTY
        return cls(ids[filled], band_keys(sigs[filled], cfg))

    @classmethod
    def merge(cls, parts: Iterable[LSHBuckets]) -> LSHBuckets:
        parts = list(parts)
        return cls(np.concatenate([p.ids for p in parts]), np.concatenate([p.keys for p in parts]))

    def candidate_pairs(self) -> np.ndarray:
        """(m, 2) int64 document ids (i < j), sorted, each pair once: pairs sharing the key of some band."""
        pairs = np.concatenate([_pairs_sharing_key(self.keys[:, band]) for band in range(self.keys.shape[1])])
        pairs = self.ids[pairs.reshape(-1, 2)]
        return np.unique(np.sort(pairs, axis=1), axis=0)


# ---------------------------------------------------------------------------------------------------
# Verification and clusters


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A n B| / |A u B| of two sorted arrays of distinct shingle hashes. 64-bit hashes stand for the
    shingles: a collision between two shingles of a pair has probability ~|A||B| / 2^64."""
    if not len(a) or not len(b):
        return 0.0
    pos = np.searchsorted(b, a).clip(max=len(b) - 1)
    common = int(np.count_nonzero(b[pos] == a))
    return common / (len(a) + len(b) - common)


class UnionFind:
    """Disjoint sets over 0..n-1. Path compression (every node met on a find is pointed at the root) and
    union by rank (the shallower tree goes under the deeper) make any m operations O(m alpha(n))."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.rank = [0] * n

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i: int, j: int) -> bool:
        """Join the sets of i and j; False if they were already one."""
        ri, rj = self.find(i), self.find(j)
        if ri == rj:
            return False
        if self.rank[ri] < self.rank[rj]:
            ri, rj = rj, ri
        self.parent[rj] = ri
        self.rank[ri] += self.rank[ri] == self.rank[rj]
        return True

    def groups(self) -> list[list[int]]:
        """All sets, members ascending, ordered by their smallest member."""
        groups: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            groups.setdefault(self.find(i), []).append(i)
        return list(groups.values())


def verified_clusters(texts: Sequence[str], pairs: np.ndarray, cfg: MinHashConfig) -> list[list[int]]:
    """Clusters (of >= 2 document numbers) of the graph whose edges are the candidate pairs with true
    Jaccard >= threshold. A pair already in one cluster is not verified: its edge cannot change them."""
    found = UnionFind(len(texts))

    @functools.cache
    def shingles(i: int) -> np.ndarray:  # only documents in some candidate pair are shingled again
        return shingle_hashes(texts[i], cfg.ngram)

    for i, j in pairs.tolist():
        if found.find(i) != found.find(j) and jaccard(shingles(i), shingles(j)) >= cfg.threshold:
            found.union(i, j)
    return [g for g in found.groups() if len(g) > 1]


def near_duplicates(
    docs: Iterable[Document], cfg: MinHashConfig, num_workers: int = 1
) -> tuple[list[str], list[list[str]]]:
    """(ids of the documents to keep, in input order; clusters of near-duplicate ids, each in input order).
    Every cluster keeps its first document; documents in no cluster are all kept. num_workers > 1
    computes the signatures with signatures_parallel."""
    docs = list(docs)
    if len({doc.id for doc in docs}) != len(docs):
        raise ValueError("document ids must be unique")
    sigs = signatures_parallel(docs, cfg, num_workers)
    pairs = LSHBuckets.from_signatures(sigs, cfg).candidate_pairs()
    clusters = verified_clusters([doc.text for doc in docs], pairs, cfg)
    dropped = {i for cluster in clusters for i in cluster[1:]}
    keep = [doc.id for i, doc in enumerate(docs) if i not in dropped]
    return keep, [[docs[i].id for i in cluster] for cluster in clusters]


def minhash_dedup_files(inputs: list[Path], out_dir: Path, cfg: MinHashConfig, num_workers: int = 1) -> list[Path]:
    """Near-duplicate removal over plain-text files, each one document: the kept ones are written to
    out_dir/<name> (atomically); returns those output paths, in input order."""
    inputs = [Path(p) for p in inputs]
    _check_unique_names(inputs)
    docs = [Document(id=str(i), text=_read(p)) for i, p in enumerate(inputs)]
    keep, _ = near_duplicates(docs, cfg, num_workers)
    outputs = []
    for i in map(int, keep):
        outputs.append(Path(out_dir) / inputs[i].name)
        write_text_atomic(outputs[-1], docs[i].text)
    return outputs
