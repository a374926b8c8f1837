"""A fastText-style text classifier (Joulin et al. 2017, "Bag of Tricks for Efficient Text Classification"):
hashed word unigram + bigram features, the mean of their embeddings, a linear softmax. Written here on torch
tensors and trained with our AdamW; one class serves quality, NSFW or toxicity labels, whatever it is
trained on.

Features: the text's normalised words (as MinHash shingling normalises them: lowercase, NFD, punctuation
dropped) are hashed to 64 bits with `hash_segments`, each bigram as fmix64(a * M1 + b * M2), and every hash
goes to bucket `hash mod num_buckets` (2^20 by default, as fastText's hashing trick: collisions share a row,
which costs little accuracy and bounds memory). A document is the bag (multiset) of its buckets.

Model: doc vector v = mean over the bag of E[bucket] (E: (num_buckets, dim)); logits = v W + b
(W: (dim, labels)). Loss: cross-entropy. The mean is written as `index_add_` over (feature, document) pairs
and divided by the bag size, so a mini-batch of ragged documents is two flat arrays, as in EmbeddingBag.

Training updates the whole table each step (dense AdamW): O(num_buckets * dim) per step, 20 ms at 2^18 x 16
and 0.5 s at 2^20. That suits the thousands of documents a quality classifier sees here; millions would
want fastText's sparse updates (only the rows of the batch's features).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from scratchlm.atomic import atomic_path, write_text_atomic
from scratchlm.data.dedup_exact import fmix64, hash_segments
from scratchlm.data.document import Document
from scratchlm.data.minhash import _words
from scratchlm.optim.adamw import AdamW
from scratchlm.optim.loss import cross_entropy

FORMAT, VERSION = "scratchlm.text_classifier", 1
_BIGRAM_A, _BIGRAM_B = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)


@dataclass(kw_only=True, frozen=True)
class ClassifierConfig:
    num_buckets: int = field(default=1 << 18, metadata={"help": "hash buckets for unigram and bigram features"})
    dim: int = field(default=16, metadata={"help": "embedding size"})
    epochs: int = field(default=10, metadata={"help": "passes over the training set"})
    batch_size: int = field(default=32, metadata={"help": "documents per optimizer step"})
    lr: float = field(default=0.02, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_words: int = field(default=5000, metadata={"help": "only the first max_words words of a text count"})
    seed: int = 0

    def __post_init__(self):
        for name in ("num_buckets", "dim", "epochs", "batch_size", "max_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"classifier {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"classifier lr must be > 0, got {self.lr}")


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: the ops here are small (a batch of bags, a (dim, labels) matrix), and on a
    busy machine torch's intra-op threads spin-waiting for each other made training 30x slower (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def feature_buckets(text: str, num_buckets: int, max_words: int = 5000) -> np.ndarray:
    """(n_features,) int64 buckets of the text's word unigrams, then its bigrams, over its first max_words
    words (repeats kept: the bag is a multiset)."""
    chars, starts = _words(text)  # chars (L,) code points of all words back to back, starts (n_words,)
    if len(starts) > max_words:
        chars, starts = chars[: starts[max_words]], starts[:max_words]
    if not len(starts):
        return np.zeros(0, dtype=np.int64)
    words = hash_segments(chars, starts)  # (n_words,) uint64
    bigrams = fmix64(words[:-1] * _BIGRAM_A + words[1:] * _BIGRAM_B)  # (n_words - 1,)
    return (np.concatenate([words, bigrams]) % np.uint64(num_buckets)).astype(np.int64)


def _bags(features: Sequence[np.ndarray]) -> tuple[Tensor, Tensor, Tensor]:
    """Flat (feature, document) pairs of a batch: buckets (F,), document index (F,), bag sizes (n,)."""
    sizes = torch.tensor([len(f) for f in features], dtype=torch.int64)
    flat = torch.from_numpy(np.concatenate(features)) if len(features) else torch.zeros(0, dtype=torch.int64)
    return flat, torch.repeat_interleave(torch.arange(len(features)), sizes), sizes


class TextClassifier(torch.nn.Module):
    """fastText-style classifier over `labels`; see the module docstring."""

    def __init__(self, labels: Sequence[str], num_buckets: int = 1 << 18, dim: int = 16, max_words: int = 5000,
                 seed: int = 0):
        super().__init__()
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"a classifier needs at least two distinct labels, got {list(labels)}")
        self.labels, self.num_buckets, self.dim, self.max_words = list(labels), num_buckets, dim, max_words
        gen = torch.Generator().manual_seed(seed)
        # fastText's init: input rows uniform in +-1/dim, output zero (the first step then moves the output)
        self.embedding = torch.nn.Parameter((torch.rand(num_buckets, dim, generator=gen) * 2 - 1) / dim)
        self.weight = torch.nn.Parameter(torch.zeros(dim, len(labels)))
        self.bias = torch.nn.Parameter(torch.zeros(len(labels)))

    def features(self, text: str) -> np.ndarray:
        return feature_buckets(text, self.num_buckets, self.max_words)

    def forward(self, features: Sequence[np.ndarray]) -> Tensor:
        """(n, labels) logits of n documents given as feature_buckets arrays. An empty bag has v = 0."""
        flat, doc, sizes = _bags(features)
        sums = torch.zeros(len(features), self.dim, dtype=self.embedding.dtype).index_add_(0, doc, self.embedding[flat])
        vectors = sums / sizes.clamp(min=1).unsqueeze(1).to(sums.dtype)  # (n, dim)
        return vectors @ self.weight + self.bias

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, labels) probabilities."""
        with _one_thread():
            return torch.softmax(self([self.features(t) for t in texts]), dim=-1).numpy()

    def predict(self, text: str) -> tuple[str, float]:
        """(most likely label, its probability)."""
        probs = self.predict_proba([text])[0]
        best = int(np.argmax(probs))
        return self.labels[best], float(probs[best])

    def save(self, directory: str | os.PathLike) -> None:
        """directory/model.safetensors (E, W, b) and directory/model.json (labels, sizes), each atomic; the
        JSON is written last, so a directory with model.json holds a whole model."""
        directory = Path(directory)
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file({"embedding": self.embedding.detach(), "weight": self.weight.detach(),
                       "bias": self.bias.detach()}, str(tmp))
        meta = {"format": FORMAT, "version": VERSION, "labels": self.labels, "num_buckets": self.num_buckets,
                "dim": self.dim, "max_words": self.max_words}
        write_text_atomic(directory / "model.json", json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TextClassifier:
        directory = Path(directory)
        meta_path = directory / "model.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no classifier in {directory}: model.json is missing (train one with "
                                    "`scratchlm data train-quality`)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{meta_path}: expected format {FORMAT} v{VERSION}, got {meta.get('format')} v{meta.get('version')}")
        model = cls(meta["labels"], meta["num_buckets"], meta["dim"], meta["max_words"])
        tensors = load_file(str(directory / "model.safetensors"))
        expected = {"embedding": (model.num_buckets, model.dim), "weight": (model.dim, len(model.labels)),
                    "bias": (len(model.labels),)}
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise ValueError(f"{directory}: tensor {name} has shape {tuple(tensors[name].shape)}, expected {shape}")
        with torch.no_grad():
            for name in expected:
                getattr(model, name).copy_(tensors[name])
        return model


def train_classifier(texts: Sequence[str], labels: Sequence[str], cfg: ClassifierConfig = ClassifierConfig(),
                     progress: bool = False) -> TextClassifier:
    """Train on (text, label) pairs with AdamW and mini-batches in a seeded random order."""
    if len(texts) != len(labels) or not texts:
        raise ValueError(f"need as many labels as texts (got {len(texts)} texts, {len(labels)} labels), at least one")
    names = sorted(set(labels))
    model = TextClassifier(names, cfg.num_buckets, cfg.dim, cfg.max_words, cfg.seed)
    features = [model.features(t) for t in texts]
    targets = torch.tensor([names.index(label) for label in labels])
    optimizer = AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    with _one_thread():
        for epoch in range(cfg.epochs):
            order = rng.permutation(len(texts))
            total = 0.0
            for start in range(0, len(texts), cfg.batch_size):
                batch = order[start : start + cfg.batch_size]
                loss = cross_entropy(model([features[i] for i in batch]), targets[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            if progress:
                print(f"epoch {epoch + 1}/{cfg.epochs}: loss {total / len(texts):.4f}")
    return model.eval()


def accuracy(model: TextClassifier, texts: Sequence[str], labels: Sequence[str]) -> float:
    probs = model.predict_proba(texts)
    predicted = [model.labels[i] for i in probs.argmax(axis=1)]
    return float(np.mean([p == t for p, t in zip(predicted, labels)]))


@cache
def _load_cached(directory: str) -> TextClassifier:
    return TextClassifier.load(directory)


@dataclass(frozen=True, kw_only=True)
class ClassifierFilter:
    """Pipeline step: scores each document with a saved TextClassifier, records P(label) in
    metadata[name + "_score"], and drops with reason name when it is below `threshold`."""

    model: str = field(metadata={"help": "folder of a saved classifier (model.json + model.safetensors)"})
    label: str = field(default="hq", metadata={"help": "the label whose probability must reach the threshold"})
    threshold: float = field(default=0.5, metadata={"help": "smallest P(label) kept"})
    name: str = "quality_classifier"

    def __post_init__(self):
        model = _load_cached(str(Path(self.model).resolve()))  # fail at configuration time, not mid-run
        if self.label not in model.labels:
            raise ValueError(f"classifier {self.model} has labels {model.labels}, not {self.label!r}")

    def __call__(self, doc: Document) -> Document | None:
        model = _load_cached(str(Path(self.model).resolve()))
        score = float(model.predict_proba([doc.text])[0][model.labels.index(self.label)])
        doc.metadata[f"{self.name}_score"] = round(score, 4)
        if score < self.threshold:
            doc.metadata["drop_reason"] = self.name
            return None
        return doc
