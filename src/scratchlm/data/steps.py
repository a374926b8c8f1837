"""Pipeline steps by name, and the three deduplication steps that need the whole corpus.

A *document step* is a callable `step(doc) -> Document | None` with a `name` (drop reason in
doc.metadata["drop_reason"] when it returns None): extraction, language ID, filters, PII masking. It sees one
document at a time, so tasks run it in parallel with no shared state.

A *global step* decides with knowledge of every document, so it runs in two halves around a barrier:

1. `summarize(docs)`, per task, over the documents the task wrote: a small dict of NumPy arrays (document
   keys, line-hash counts, MinHash signatures), saved next to the task's output;
2. `decide(summaries, texts)`, once, over the summaries of all tasks in task order: the global state
   (which documents are duplicates, how often each line occurs), saved once;
3. `bind(task, state)`, per task in the next pass: a document step that applies the decision to the same
   documents in the same order (position i of task t is the i-th document that task wrote).

`texts(t, i)` gives the text of document i of task t, for MinHash's verification of candidate pairs by
exact Jaccard (only documents in some candidate pair are read back).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from scratchlm.config import ConfigError, from_dict
from scratchlm.data.dedup_exact import LineCounts, count_lines, document_key, drop_repeated_lines
from scratchlm.data.document import Document
from scratchlm.data.minhash import LSHBuckets, MinHashConfig, shard_signatures, verified_clusters

Arrays = dict[str, np.ndarray]
DocumentStep = Callable[[Document], "Document | None"]
TextLookup = Callable[[int, int], str]


class GlobalStep(Protocol):
    name: str

    def summarize(self, docs: Iterable[Document]) -> Arrays: ...

    def decide(self, summaries: list[Arrays], texts: TextLookup) -> Arrays: ...

    def bind(self, task: int, state: Arrays) -> DocumentStep: ...


def _drop_positions(task: int, state: Arrays) -> set[int]:
    return set(state["drop_pos"][state["drop_task"] == task].tolist())


@dataclass
class _DropListed:
    """Document step: drops the documents at the listed positions of one task, counting positions as it goes."""

    name: str
    drop: set[int]
    position: int = 0

    def __call__(self, doc: Document) -> Document | None:
        self.position += 1
        if self.position - 1 in self.drop:
            doc.metadata["drop_reason"] = self.name
            return None
        return doc


def _drop_state(pairs: Iterable[tuple[int, int]]) -> Arrays:
    pairs = sorted(pairs)
    return {"drop_task": np.array([t for t, _ in pairs], dtype=np.int64),
            "drop_pos": np.array([i for _, i in pairs], dtype=np.int64)}


@dataclass(frozen=True, kw_only=True)
class ExactDocDedupStep:
    """Global step: drops every document whose normalised text (scratchlm.data.dedup_exact.document_key) was
    seen before, in (task, position) order, so the first copy in input order stays."""

    name: str = "dedup_exact_doc"

    def summarize(self, docs: Iterable[Document]) -> Arrays:
        keys = b"".join(document_key(doc.text) for doc in docs)
        return {"keys": np.frombuffer(keys, dtype=np.uint8).reshape(-1, 16)}  # (n, 16) 128-bit keys

    def decide(self, summaries: list[Arrays], texts: TextLookup) -> Arrays:
        seen: set[bytes] = set()
        drops = []
        for task, summary in enumerate(summaries):
            for pos, key in enumerate(map(bytes, summary["keys"])):
                if key in seen:
                    drops.append((task, pos))
                seen.add(key)
        return _drop_state(drops)

    def bind(self, task: int, state: Arrays) -> DocumentStep:
        return _DropListed(self.name, _drop_positions(task, state))


@dataclass(frozen=True, kw_only=True)
class LineDedupStep:
    """Global step: exact line dedup in two passes (pass 1 counts line hashes in every task, the counts are
    summed, pass 2 removes from each document every line counted more than once); a document left without
    lines is dropped. Blank lines stay unless keep_blank_lines is off (they separate paragraphs, and every
    document repeats them)."""

    keep_blank_lines: bool = True
    name: str = "dedup_lines"

    def summarize(self, docs: Iterable[Document]) -> Arrays:
        counts = count_lines(docs)
        return {"keys": counts.keys, "counts": counts.counts}

    def decide(self, summaries: list[Arrays], texts: TextLookup) -> Arrays:
        counts = LineCounts.from_hashes(np.empty(0, dtype=np.uint64)).merge(
            *(LineCounts(s["keys"], s["counts"]) for s in summaries))
        return {"keys": counts.keys, "counts": counts.counts}

    def bind(self, task: int, state: Arrays) -> DocumentStep:
        counts = LineCounts(state["keys"], state["counts"])
        name, keep_blank = self.name, self.keep_blank_lines

        def apply(doc: Document) -> Document | None:
            kept = drop_repeated_lines(doc, counts, keep_blank)
            if kept is None:
                doc.metadata["drop_reason"] = name
            return kept

        return apply


@dataclass(frozen=True, kw_only=True)
class MinHashDedupStep:
    """Global step: MinHash + LSH near-duplicate removal (scratchlm.data.minhash): signatures per task, one
    LSH index over all of them, candidate pairs verified by exact Jaccard, union-find clusters, and every
    cluster keeps its first document in (task, position) order."""

    num_hashes: int = 128
    bands: int = 16
    ngram: int = 5
    threshold: float = 0.8
    seed: int = 0
    name: str = "dedup_minhash"

    def __post_init__(self):
        self.config()  # validates

    def config(self) -> MinHashConfig:
        return MinHashConfig(num_hashes=self.num_hashes, bands=self.bands, ngram=self.ngram,
                             threshold=self.threshold, seed=self.seed)

    def summarize(self, docs: Iterable[Document]) -> Arrays:
        return {"signatures": shard_signatures((doc.text for doc in docs), self.config())}  # (n, num_hashes)

    def decide(self, summaries: list[Arrays], texts: TextLookup) -> Arrays:
        cfg = self.config()
        sizes = [len(s["signatures"]) for s in summaries]
        offsets = np.concatenate(([0], np.cumsum(sizes)))  # global id = offsets[task] + position
        buckets = LSHBuckets.merge(LSHBuckets.from_signatures(s["signatures"], cfg, ids=offsets[t] + np.arange(n))
                                   for t, (s, n) in enumerate(zip(summaries, sizes)))
        pairs = buckets.candidate_pairs() if len(buckets.ids) else np.zeros((0, 2), dtype=np.int64)
        corpus = _GlobalTexts(offsets, texts)
        clusters = verified_clusters(corpus, pairs, cfg)
        drops = [corpus.locate(i) for cluster in clusters for i in cluster[1:]]
        return _drop_state(drops)

    def bind(self, task: int, state: Arrays) -> DocumentStep:
        return _DropListed(self.name, _drop_positions(task, state))


class _GlobalTexts(Sequence[str]):
    """Texts by global document number, read lazily through `texts(task, position)`."""

    def __init__(self, offsets: np.ndarray, texts: TextLookup):
        self.offsets, self.texts = offsets, texts

    def locate(self, i: int) -> tuple[int, int]:
        task = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return task, int(i - self.offsets[task])

    def __getitem__(self, i):
        return self.texts(*self.locate(int(i)))

    def __len__(self) -> int:
        return int(self.offsets[-1])


# Step types by name; each is imported when used, so a worker never imports torch for a pipeline that has no
# classifier step.
STEP_TYPES: dict[str, str] = {
    "extract": "scratchlm.data.extract:Extract",
    "langid": "scratchlm.data.langid:LanguageFilter",
    "gopher": "scratchlm.data.quality:GopherQuality",
    "badwords": "scratchlm.data.badwords:BadWordsFilter",
    "classifier": "scratchlm.data.classifier:ClassifierFilter",
    "pii": "scratchlm.data.pii:MaskPII",
    "dedup_exact_doc": "scratchlm.data.steps:ExactDocDedupStep",
    "dedup_lines": "scratchlm.data.steps:LineDedupStep",
    "dedup_minhash": "scratchlm.data.steps:MinHashDedupStep",
}


def _step_class(kind: str) -> type:
    """A registered step, or "package.module:Class" for a step defined elsewhere."""
    module, colon, name = STEP_TYPES.get(kind, kind).partition(":")
    if not colon:
        raise ConfigError(f"unknown step type {kind!r}: use one of {', '.join(STEP_TYPES)}, or 'package.module:Class'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"step type {kind!r}: cannot import it ({e})") from None


def build_step(table: dict[str, Any]) -> Any:
    """The step described by a TOML table {"type": ..., settings...} (settings checked against the class)."""
    table = dict(table)
    kind = table.pop("type", None)
    if not isinstance(kind, str):
        raise ConfigError(f"every step needs a type, e.g. type = \"gopher\"; got {table!r}")
    cls = _step_class(kind)
    try:
        return from_dict(cls, table)
    except (ConfigError, ValueError) as e:
        raise ConfigError(f"step {kind!r}: {e}") from None


def is_global(step: Any) -> bool:
    return all(hasattr(step, attr) for attr in ("summarize", "decide", "bind"))

