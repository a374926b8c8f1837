"""Pre-tokenization: regex patterns, splitting on special tokens, and cut points that never change the result.

BPE merges never cross a pre-token boundary or a special token, so text can be cut into pieces and
pre-tokenized independently only at positions that are boundaries whatever text follows. `safe_cut`
finds such positions; streaming encode and parallel training/encoding rely on it for exactness.
"""

from __future__ import annotations

import re

import regex

# GPT-2's pattern (Radford et al. 2019, openai/gpt-2 encoder.py), as used by tiktoken's "gpt2" encoding.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4's cl100k_base pattern (tiktoken): case-insensitive contractions, digits in groups of at most 3.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}


def resolve_pattern(pattern: str) -> str:
    """A pattern name ("gpt2", "gpt4") or a raw regex -> the regex, checked to compile."""
    if pattern in PATTERNS:
        return PATTERNS[pattern]
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise ValueError(f"pattern {pattern!r} is neither one of {sorted(PATTERNS)} nor a valid regex: {e}") from e
    return pattern


# Cut points: a space with non-whitespace on both sides. Under the GPT-2 and GPT-4 patterns
#  - no alternative matches a non-space character followed by a space, so no pre-token crosses it;
#  - the match at the space depends only on the text from there on (no pattern looks behind);
#  - the pre-token that ends just before it ends the same way at the end of a string (runs of
#    letters, digits or punctuation stop at a space as at the end; only whitespace runs look ahead,
#    and the text before the cut ends in non-whitespace).
# The last point is why a newline is not a cut point: in "\r\na" the run "\r\n" splits into "\r", "\n"
# because an "a" follows, but stays whole at the end of a string (found by the property tests).
TEXT_BOUNDARY = regex.compile(r"(?<=\S) (?=\S)")
# The same rule restricted to ASCII, valid on raw UTF-8 bytes decoded as latin-1 (one char per byte):
# ASCII bytes never occur inside a multi-byte UTF-8 sequence.
BYTE_BOUNDARY = regex.compile(r"(?<=[!-~]) (?=[!-~])")
_BOUNDARY_SAFE_PATTERNS = {GPT2_PATTERN, GPT4_PATTERN}


class Splitter:
    """Splits text at special tokens and at safe cut points for one pattern and set of special tokens.

    Special tokens are matched longest-first, so when two overlap the longer one wins.
    """

    def __init__(self, pattern: str, special_tokens: list[str] | tuple[str, ...] = (), *, on_bytes: bool = False):
        self.pattern = resolve_pattern(pattern)
        self.special_tokens = list(special_tokens)
        specials = [s.encode("utf-8").decode("latin-1") for s in special_tokens] if on_bytes else self.special_tokens
        self.max_special_len = max((len(s) for s in specials), default=0)
        self.special_re = special_regex(specials)
        safe = self.pattern in _BOUNDARY_SAFE_PATTERNS
        self.boundary_re = (BYTE_BOUNDARY if on_bytes else TEXT_BOUNDARY) if safe else None

    def safe_cut(self, text: str, window: int = 1 << 14) -> int:
        """The largest p such that text[:p] and text[p:] + anything pre-tokenize independently; 0 if none.

        `text` must itself start at a cut point (or at the start of the stream). Cuts are either just
        after a special token or at a boundary outside any special token. Positions within
        max_special_len of the end are not trusted: a special token could still be completed (or
        lengthened) by text that has not arrived yet.
        """
        limit = len(text) - max(self.max_special_len - 1, 1)
        if limit <= 0:
            return 0
        # Special tokens are scanned from the start: only a scan from a true cut point sees the same
        # leftmost-longest matches as a scan of the whole stream.
        specials = [m.span() for m in self.special_re.finditer(text, 0, limit + self.max_special_len)] if self.special_re else []
        best = max((e for _, e in specials if e <= limit), default=0)
        if self.boundary_re is None:
            return best
        hi, lo = limit, limit
        while lo > best:
            lo = max(best, lo - window)
            for m in reversed(list(self.boundary_re.finditer(text, lo, min(len(text), hi + 1)))):
                p = m.start()
                if p <= hi and not any(s < p < e for s, e in specials):
                    return p
            hi, window = lo, window * 4
        return best

    def split_specials(self, text: str) -> list[str]:
        """Text between special tokens (the special tokens themselves dropped), for training."""
        return self.special_re.split(text) if self.special_re else [text]

    def chunks(self, blocks, min_chars: int = 1 << 20):
        """Regroup a stream of text blocks into chunks of >= min_chars that each pre-tokenize on their own.

        Memory stays bounded by about min_chars plus one block, unless the text has no cut point at all
        (no special token, and no newline/space boundary or a custom pattern), where it must accumulate.
        """
        buf = ""
        for block in blocks:
            buf += block
            if len(buf) < min_chars:
                continue
            cut = self.safe_cut(buf)
            if cut > 0:
                yield buf[:cut]
                buf = buf[cut:]
        if buf:
            yield buf


def check_special_tokens(special_tokens: list[str]) -> list[str]:
    """The special tokens as a list, after checking they are unique non-empty strings."""
    if isinstance(special_tokens, str):
        raise ValueError("special_tokens must be a list of strings, not a single string")
    for s in special_tokens:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special tokens must be unique, got {special_tokens}")
    return list(special_tokens)


def special_regex(special_tokens: list[str]) -> regex.Pattern | None:
    """Alternation of the special tokens, longest first so the longest of overlapping ones wins."""
    if not special_tokens:
        return None
    ordered = sorted(set(special_tokens), key=lambda s: (-len(s), s))
    return regex.compile("|".join(regex.escape(s) for s in ordered))


# Splitting at every TEXT_BOUNDARY runs in C and cuts text into space-led "units" (" word," or
# " don't") that repeat far more than raw text does, so the encoder caches whole units and runs the
# pre-tokenization regex only on units it has not seen. Stdlib `re` is used because its \s is a
# superset of `regex`'s (it adds U+001C..U+001F), so its \S-guarded cuts are a subset of the valid ones.
UNIT_SPLIT = re.compile(r"(?<=\S) (?=\S)")


def unit_split(pattern: str) -> re.Pattern | None:
    """The unit splitter when `pattern` is one for which UNIT_SPLIT cuts are exact, else None."""
    return UNIT_SPLIT if pattern in _BOUNDARY_SAFE_PATTERNS else None


def split_joinable(units) -> tuple[list[str], list[str]]:
    """Units (cut by UNIT_SPLIT) that may be pre-tokenized together, and those that must go alone.

    Units that end in non-whitespace can be joined as " u1 u2 ...": every joining space then sits
    between two non-space characters, a cut point, so each unit's pre-tokens are unchanged. A unit
    ending in whitespace (str.isspace, a superset of regex's \\s: the safe side) would not be.
    """
    joinable, lone = [], []
    for unit in units:
        (lone if unit[-1:].isspace() else joinable).append(unit)
    return joinable, lone
