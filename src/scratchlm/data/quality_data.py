"""The real data behind the quality classifier, from the shared data folder (MANIFEST.md there):

- "hq" (high quality): Wikipedia articles (pretrain/wikipedia-valid, cleaned WikiExtractor output) and the
  WikiText-2 test articles (text/wikitext2_raw_test.txt.gz, split at its " = Title = " headings);
- "cc" (raw crawl): every English web page of webcrawl/ as a crawl would give it: WARC responses and the
  article-benchmark pages extracted in *full* mode (menus, footers, cookie notices and all, like WET text),
  the CCNet documents of webcrawl/wet_text, and CS336's low_quality_cc.txt.

This is the CS336 / GPT-3 recipe in miniature (reference-quality text against random crawl), so the classifier
learns "reads like an encyclopedia" against "reads like a web page". Classes are
balanced by topping up the WikiText articles with Wikipedia articles to the number of crawl pages. Every example
is a whole document, so `split` holds out whole pages and articles.
"""

from __future__ import annotations

import gzip
import lzma
import re
from pathlib import Path

import numpy as np

from scratchlm.data.extract import extract_text
from scratchlm.data.langid import identify
from scratchlm.data.readers import ReadStats, read_documents

_WIKITEXT_TITLE = re.compile(r"^ = ([^=].*?) = $", re.MULTILINE)


def wikipedia_articles(root: Path, limit: int) -> list[str]:
    """The first `limit` articles of pretrain/wikipedia-valid."""
    with lzma.open(root / "pretrain" / "wikipedia-valid.txt.xz", "rt", encoding="utf-8") as f:
        text = f.read()
    return text.split("\n<|endoftext|>\n")[:limit]


def wikitext_articles(root: Path) -> list[str]:
    """WikiText-2 test articles (the file is one stream; each article starts with a " = Title = " line)."""
    with gzip.open(root / "text" / "wikitext2_raw_test.txt.gz", "rt", encoding="utf-8") as f:
        text = f.read()
    starts = [m.start() for m in _WIKITEXT_TITLE.finditer(text)] + [len(text)]
    return [text[a:b].strip() for a, b in zip(starts, starts[1:]) if text[a:b].strip()]


def crawl_pages(root: Path) -> list[str]:
    """English crawl pages as full-mode text (see the module docstring)."""
    web = root / "webcrawl"
    texts = []
    for path in sorted((web / "warc").glob("*.warc.gz")):
        for doc in read_documents(path, "warc", ReadStats()):
            texts.append(extract_text(doc.html, doc.metadata.get("charset"), "full"))
    for path in sorted((web / "article_extraction_benchmark" / "html").glob("*.html.gz")):
        texts.append(extract_text(gzip.decompress(path.read_bytes()), None, "full"))
    for path in sorted((web / "wet_text").glob("*.jsonl.gz")):
        texts.extend(doc.text for doc in read_documents(path, "jsonl", ReadStats()))
    texts.append((web / "html_fixtures" / "low_quality_cc.txt").read_text(encoding="utf-8"))
    return [t for t in texts if t and identify(t)[0] == "en"]


def quality_examples(root: Path) -> tuple[list[str], list[str]]:
    """(texts, labels) with labels "hq" and "cc", balanced, in a fixed order."""
    negatives = crawl_pages(root)
    positives = wikitext_articles(root)
    positives += wikipedia_articles(root, max(len(negatives) - len(positives), 0))
    return positives + negatives, ["hq"] * len(positives) + ["cc"] * len(negatives)


def split(n: int, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): a seeded random permutation cut at test_fraction."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * test_fraction))
    return np.sort(order[cut:]), np.sort(order[:cut])
