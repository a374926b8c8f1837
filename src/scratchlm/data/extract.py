"""HTML -> text: decode the page bytes (declared or detected encoding), then extract its text with resiliparse.

Two modes: "main" keeps the main content (article body, post, documentation text) and drops navigation,
headers, footers and sidebars by resiliparse's block heuristics, plus every <footer>, <nav> and <aside>
element, comment sections and post metadata (author, date lines), then (`main_content`):
- boilerplate elements by class (MAIN_SKIP_CLASSES: photo captions and galleries, credits, newsletter
  boxes, related-article lists), guarded by a fallback: if skipping them leaves less than half of the text
  (a <div class="photo-story"> around the article, say), the text without that skip is used;
- boilerplate lines (`drop_boilerplate_lines`): short lines that are only "Advertisement", "Share on
  Twitter", "Image 1 of 8", "Photo: ...", cookie banners, and everything after a
  "Related articles" / "You may also like" heading in the second half of the text.
"full" keeps all visible text, as Common Crawl's WET files do. Both keep paragraphs, line breaks and list
bullets (`preserve_formatting`), which later steps need (Gopher's line and bullet rules, line dedup), and
skip link targets, form fields, alt texts and <noscript>. On the article-extraction benchmark the main-mode
choices move token F1 from 0.898 (resiliparse's defaults) to 0.951 (trafilatura: 0.948), at ~8x
trafilatura's speed (docs/data.md).

Decoding: the HTTP (or <meta>) charset when it decodes the bytes without error, else uchardet's guess
(resiliparse.parse.encoding.detect_encoding), with resiliparse's UTF-8 / Windows-1252 fallbacks. Bytes that
decode to text full of control characters (an image or a zip served as text/html) are *undecodable*:
`decode_html` returns None, and so does `extract_text`, instead of passing binary junk down the pipeline.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Literal

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from resiliparse.parse.html import HTMLTree

from scratchlm.data.document import Document

MODES = ("main", "full")
# HTML5 boilerplate sections. Not <header>: real pages (commoncrawl.org in the dolma WARC sample) put their
# whole hero text in one, and skipping it empties them; on the article benchmark it would add +0.008 F1.
MAIN_SKIP = ("footer", "nav", "aside")
# Class names of boilerplate inside or beside the article. Substring matches, so they can hit a wrapper of the
# whole article: main_content() then falls back to MAIN_SKIP alone (MIN_KEPT_FRACTION).
MAIN_SKIP_CLASSES = ("caption", "gallery", "photo", "credit", "newsletter", "related")
MIN_KEPT_FRACTION = 0.5
# A whole line (bullet stripped) of at most BOILERPLATE_MAX_WORDS words that is page furniture, not prose.
# No single words that can be headings of real text ("Email", "Print", "Comments": Python docs sections).
BOILERPLATE_LINE = re.compile(
    r"advertisements?|(share( (on|via) \w+)+\s*)+|\d+ shares|(related|more) (articles|stories|posts)|read more"
    r"|you (may|might) also like\W*|filed under:?|skip to (main )?content|back to top|loading ?\.\.\."
    r"|image \d+ of /? ?\d+|photo: .*",
    re.IGNORECASE,
)
BOILERPLATE_MAX_WORDS = 12
# Cookie banners: a line of at most COOKIE_MAX_WORDS words with one of these phrases (not any mention of cookies:
# the Python docs of http.cookiejar must stay).
COOKIE_BANNER = re.compile(
    r"\b(this (web)?site|we|our (web)?site) uses? cookies\b|\baccept (all )?cookies\b|\bcookie (policy|settings|preferences)\b"
    r"|\b(consent to|accept) (our|the) use of cookies\b",
    re.IGNORECASE,
)
COOKIE_MAX_WORDS = 60
# A heading that starts the list of links to other articles; in the second half of the text, everything from it
# on goes.
RECIRCULATION_HEADING = re.compile(
    r"(related (articles|stories|posts|content)|you (may|might) also like|more stories|most popular"
    r"|recommended for you|trending now|popular (posts|stories|articles))\W*",
    re.IGNORECASE,
)
MAX_CONTROL_FRACTION = 0.01  # text has tabs and newlines, almost never other C0 controls; random bytes ~11%
_CONTROL = frozenset(chr(c) for c in range(32) if chr(c) not in "\t\n\r\f") | {"\x7f", "\ufffd"}


def _known_codec(name: str | None) -> str | None:
    try:
        return codecs.lookup(name).name if name else None
    except LookupError:
        return None


def control_fraction(text: str) -> float:
    """Share of characters that are C0 control characters (not tab/newline/CR/FF), DEL or U+FFFD."""
    return sum(map(text.count, _CONTROL)) / len(text) if text else 0.0


def decode_html(data: bytes, charset: str | None = None) -> str | None:
    """The page as text, or None when it is not text in any encoding (more than 1% control characters)."""
    if not data:
        return None
    declared = _known_codec(charset)
    text = None
    if declared:
        try:
            text = data.decode(declared)
        except UnicodeDecodeError:
            pass  # a wrong declaration is common on the web: detect instead
    if text is None:
        text = bytes_to_str(data, detect_encoding(data, from_html_meta=True), errors="replace")
    return text if control_fraction(text) <= MAX_CONTROL_FRACTION else None


def drop_boilerplate_lines(text: str) -> str:
    """text without BOILERPLATE_LINE and COOKIE_BANNER lines, cut at a RECIRCULATION_HEADING line that comes after
    half of its words; if a line went, the runs of blank lines left behind are collapsed to one."""
    lines = text.split("\n")
    total, seen, kept = len(text.split()), 0, []
    for line in lines:
        bare = line.strip().lstrip("•").strip()
        words = len(bare.split())
        if words <= 5 and seen >= total / 2 and RECIRCULATION_HEADING.fullmatch(bare):
            break
        seen += words
        if words <= BOILERPLATE_MAX_WORDS and BOILERPLATE_LINE.fullmatch(bare):
            continue
        if words <= COOKIE_MAX_WORDS and COOKIE_BANNER.search(bare):
            continue
        kept.append(line)
    if len(kept) == len(lines):
        return text
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()


def main_content(tree: HTMLTree) -> str:
    """The "main" mode (module docstring): resiliparse's main content without MAIN_SKIP and MAIN_SKIP_CLASSES
    elements (or without MAIN_SKIP only, if the classes took more than half of it), boilerplate lines dropped."""
    def extract(skip: list[str]) -> str:
        return extract_plain_text(tree, preserve_formatting=True, main_content=True, alt_texts=False, noscript=False,
                                  comments=False, post_meta=False, skip_elements=skip).strip()

    strict = extract([*MAIN_SKIP, *(f"[class*={name}]" for name in MAIN_SKIP_CLASSES)])
    plain = extract(list(MAIN_SKIP))  # the same tree: extraction does not change it
    return drop_boilerplate_lines(strict if len(strict) >= MIN_KEPT_FRACTION * len(plain) else plain)


def html_to_text(html: str, mode: Literal["main", "full"] = "main") -> str:
    """Visible text of an HTML page (see the module docstring for the modes), paragraphs kept."""
    if mode not in MODES:
        raise ValueError(f"extraction mode must be one of {MODES}, got {mode!r}")
    tree = HTMLTree.parse(html)
    if mode == "full":
        return extract_plain_text(tree, preserve_formatting=True, alt_texts=False, noscript=False).strip()
    return main_content(tree)


def extract_text(data: bytes, charset: str | None = None, mode: Literal["main", "full"] = "main") -> str | None:
    """Text of an HTML page given as bytes; None when the bytes cannot be decoded as text."""
    html = decode_html(data, charset)
    return None if html is None else html_to_text(html, mode)


@dataclass(frozen=True, kw_only=True)
class Extract:
    """Pipeline step: fills `doc.text` from `doc.html` (then drops the bytes). Drop reasons: "extract_undecodable"
    (binary), "extract_empty" (no text left, e.g. a page that is all script). Documents that already have
    text and no HTML (WET, JSONL) pass unchanged."""

    mode: Literal["main", "full"] = "main"
    name: str = "extract"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"extract.mode must be one of {MODES}, got {self.mode!r}")

    def __call__(self, doc: Document) -> Document | None:
        if doc.html is None:
            return doc
        text = extract_text(doc.html, doc.metadata.get("charset"), self.mode)
        doc.html = None
        if text is None:
            doc.metadata["drop_reason"] = "extract_undecodable"
            return None
        doc.text = text
        if not text:
            doc.metadata["drop_reason"] = "extract_empty"
            return None
        return doc
