"""Language identification: `identify(text) -> (ISO 639-1 code, probability)`, and a threshold filter step.

Backed by py3langid (a NumPy port of langid.py, Lui & Baldwin 2012: byte n-gram features, multinomial naive
Bayes over 97 languages), whose model ships inside the wheel, so nothing is downloaded at run time. Scores are
the normalised posterior probability of the best language. Why not fastText's lid.176: its quality is higher
on short and noisy text, but it needs the fasttext C++ extension; py3langid is pure NumPy and gets the UDHR
test set (tests/data/test_langid.py) and the crawl samples right. Swapping the backend means replacing
`_identifier` and `identify` only.

Newlines are folded to spaces and only the first `max_chars` characters are scored: the language of a page
is clear after a few thousand characters, and scoring cost grows with length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from scratchlm.data.document import Document

MAX_CHARS = 2_000


@cache
def _identifier():
    """Loaded once per process (0.6 s: the model is an xz-compressed NumPy archive)."""
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)


def identify(text: str, max_chars: int = MAX_CHARS) -> tuple[str, float]:
    """(language code, probability in [0, 1]) of the text's most likely language; ("unknown", 0.0) for text
    without letters."""
    sample = " ".join(text[:max_chars].split())
    if not any(c.isalpha() for c in sample):
        return "unknown", 0.0
    language, score = _identifier().classify(sample)
    return language, float(score)


@dataclass(frozen=True, kw_only=True)
class LanguageFilter:
    """Pipeline step: records metadata["language"] and ["language_score"]; drops with "langid_language" when
    the language is not in `languages` (empty: keep every language) and "langid_low_score" when the score is
    below `threshold`."""

    languages: tuple[str, ...] = field(default=("en",), metadata={"help": "languages to keep (ISO 639-1)"})
    threshold: float = field(default=0.65, metadata={"help": "smallest probability of the identified language"})
    name: str = "langid"

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"langid.threshold must be in [0, 1], got {self.threshold}")
        object.__setattr__(self, "languages", tuple(self.languages))

    def __call__(self, doc: Document) -> Document | None:
        language, score = identify(doc.text)
        doc.metadata["language"], doc.metadata["language_score"] = language, round(score, 4)
        if self.languages and language not in self.languages:
            doc.metadata["drop_reason"] = "langid_language"
            return None
        if score < self.threshold:
            doc.metadata["drop_reason"] = "langid_low_score"
            return None
        return doc
