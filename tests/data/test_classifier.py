"""The fastText-style classifier: features, forward/backward against a float64 dense formula, save/load, and
the quality classifier's held-out accuracy on real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scratchlm.data.classifier import (
    ClassifierConfig,
    ClassifierFilter,
    TextClassifier,
    accuracy,
    feature_buckets,
    train_classifier,
)
from scratchlm.data.document import Document
from scratchlm.data.minhash import normalize


def test_features_are_normalised_unigrams_then_bigrams():
    a = feature_buckets("The cat, the HAT!", 1 << 20)
    assert len(a) == 4 + 3  # 4 words, 3 bigrams
    assert a[0] == a[2]  # "the" twice (case folded); punctuation is not a word
    assert np.array_equal(a, feature_buckets("the cat the hat", 1 << 20))
    assert not np.array_equal(a, feature_buckets("the hat the cat", 1 << 20))  # bigrams see order
    assert len(feature_buckets("one two three four", 1 << 20, max_words=2)) == 3
    assert feature_buckets(" ... ", 64).shape == (0,)
    words = normalize("Héllo wörld").split()
    assert len(feature_buckets("Héllo wörld", 1 << 20)) == len(words) * 2 - 1
    assert feature_buckets("a b c d e f g", 7).max() < 7


def dense_reference(model: TextClassifier, feats: list[np.ndarray]) -> tuple[torch.Tensor, ...]:
    """float64 copies of the parameters and the bag matrix A (n, buckets): A[d, j] = count of j in d / |d|."""
    E = model.embedding.detach().double().clone().requires_grad_()
    W = model.weight.detach().double().clone().requires_grad_()
    b = model.bias.detach().double().clone().requires_grad_()
    A = np.zeros((len(feats), model.num_buckets))
    for d, f in enumerate(feats):
        np.add.at(A[d], f, 1.0 / max(len(f), 1))
    return E, W, b, torch.from_numpy(A)


def test_forward_and_backward_match_a_dense_float64_formula():
    gen = torch.Generator().manual_seed(0)
    model = TextClassifier(["a", "b", "c"], num_buckets=97, dim=5, seed=1)
    with torch.no_grad():
        model.weight.normal_(generator=gen)
        model.bias.normal_(generator=gen)
    rng = np.random.default_rng(0)
    feats = [rng.integers(0, 97, size=n) for n in (1, 7, 30, 0, 12)]  # an empty bag too
    targets = torch.tensor([0, 2, 1, 1, 0])
    logits = model(feats)
    E, W, b, A = dense_reference(model, feats)
    ref_logits = A @ E @ W + b  # (n, labels)
    torch.testing.assert_close(logits.double(), ref_logits, rtol=1e-5, atol=1e-6)

    torch.nn.functional.cross_entropy(logits, targets).backward()
    torch.nn.functional.cross_entropy(ref_logits, targets).backward()
    for ours, ref in ((model.embedding, E), (model.weight, W), (model.bias, b)):
        torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=1e-5, atol=1e-7)


def test_training_separates_and_save_load_round_trips(tmp_path):
    texts = [f"the {w} is good and fine today" for w in ("cat", "dog", "sun", "tea")] + \
            [f"buy cheap {w} now click here free" for w in ("pills", "loans", "deals", "gold")]
    labels = ["hq"] * 4 + ["spam"] * 4
    model = train_classifier(texts, labels, ClassifierConfig(num_buckets=1 << 12, epochs=30, batch_size=4))
    assert accuracy(model, texts, labels) == 1.0
    assert model.predict("the weather is good and fine today")[0] == "hq"
    assert model.predict("click here for cheap loans now")[0] == "spam"
    model.save(tmp_path / "clf")
    loaded = TextClassifier.load(tmp_path / "clf")
    assert loaded.labels == ["hq", "spam"]
    np.testing.assert_array_equal(loaded.predict_proba(texts), model.predict_proba(texts))

    step = ClassifierFilter(model=str(tmp_path / "clf"), label="hq", threshold=0.5)
    spam = Document(id="s", text="free pills click here now")
    assert step(spam) is None and spam.metadata["drop_reason"] == "quality_classifier"
    assert spam.metadata["quality_classifier_score"] < 0.5
    with pytest.raises(ValueError, match="not 'toxic'"):
        ClassifierFilter(model=str(tmp_path / "clf"), label="toxic")

    meta = json.loads((tmp_path / "clf" / "model.json").read_text())
    (tmp_path / "clf" / "model.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ValueError, match="expected format"):
        TextClassifier.load(tmp_path / "clf")
    with pytest.raises(FileNotFoundError, match="model.json is missing"):
        TextClassifier.load(tmp_path / "nothing")


def test_config_validation():
    with pytest.raises(ValueError, match="dim"):
        ClassifierConfig(dim=0)
    with pytest.raises(ValueError, match="two distinct labels"):
        TextClassifier(["only"])


def test_quality_classifier_held_out_accuracy(shared_data_dir):
    """Wikipedia (hq) against crawl pages (cc), a seeded 70/30 split of whole documents."""
    from scratchlm.data.quality_data import quality_examples, split

    texts, labels = quality_examples(shared_data_dir)
    assert labels.count("hq") == labels.count("cc") > 200
    train, test = split(len(texts), 0.3)
    assert not set(train) & set(test)
    model = train_classifier([texts[i] for i in train], [labels[i] for i in train], ClassifierConfig(epochs=5))
    assert accuracy(model, [texts[i] for i in test], [labels[i] for i in test]) > 0.85
