"""Safe cut points must never change pre-tokenization: checked against whole-text regex findall."""

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.tokenizer.pretokenize import GPT2_PATTERN, GPT4_PATTERN, UNIT_SPLIT, Splitter, split_joinable

SPECIALS = ["<|endoftext|>", "<|endoftext|><|endoftext|>", "<|x|>"]
# Text made of the pieces that stress the patterns: whitespace runs, contractions, digits, newlines,
# the separators that `re` and `regex` disagree on, and fragments of special tokens.
FRAGMENTS = st.sampled_from(
    ["a", "Z", "é", "日本", " ", "  ", "\n", "\r\n", "\t", "'", "'s", "'ll", "'RE", "12", "3456", ".", "!!", "\x1c", "\u3000", "\xa0",
     "<|", "endoftext", "|>", "<|endoftext|>", "<|x|>", "😀", "-", "_"]
)
TEXT = st.lists(FRAGMENTS, max_size=80).map("".join)


def pretokens(text: str, pattern: str, splitter: Splitter) -> list[str]:
    out = []
    pos = 0
    matches = list(splitter.special_re.finditer(text)) if splitter.special_re else []
    for m in matches + [None]:
        end = m.start() if m else len(text)
        out += regex.findall(pattern, text[pos:end])
        if m:
            out.append(m.group())
            pos = m.end()
    return out


@settings(max_examples=300, deadline=None)
@given(text=TEXT, more=TEXT, pattern=st.sampled_from([GPT2_PATTERN, GPT4_PATTERN]), specials=st.sampled_from([[], SPECIALS]))
def test_safe_cut_is_exact_whatever_follows(text, more, pattern, specials):
    splitter = Splitter(pattern, specials)
    cut = splitter.safe_cut(text)
    assert 0 <= cut <= len(text)
    full = text + more
    assert pretokens(full[:cut], pattern, splitter) + pretokens(full[cut:], pattern, splitter) == pretokens(full, pattern, splitter)


@settings(max_examples=200, deadline=None)
@given(text=TEXT, pattern=st.sampled_from([GPT2_PATTERN, GPT4_PATTERN]))
def test_unit_split_is_exact(text, pattern):
    units = UNIT_SPLIT.split(text)
    joined = regex.findall(pattern, units[0]) + [p for u in units[1:] for p in regex.findall(pattern, " " + u)]
    assert joined == regex.findall(pattern, text)


@settings(max_examples=200, deadline=None)
@given(text=TEXT, pattern=st.sampled_from([GPT2_PATTERN, GPT4_PATTERN]))
def test_joined_units_pretokenize_exactly(text, pattern):
    joinable, lone = split_joinable(set(UNIT_SPLIT.split(text)[1:]))
    joined = regex.findall(pattern, " " + " ".join(joinable)) if joinable else []
    assert joined == [p for u in joinable for p in regex.findall(pattern, " " + u)]
    assert all(u[-1].isspace() for u in lone)


@settings(max_examples=200, deadline=None)
@given(blocks=st.lists(TEXT, max_size=10), min_chars=st.integers(1, 40), pattern=st.sampled_from([GPT2_PATTERN, GPT4_PATTERN]))
def test_chunks_preserve_pretokens(blocks, min_chars, pattern):
    splitter = Splitter(pattern, SPECIALS)
    chunks = list(splitter.chunks(blocks, min_chars=min_chars))
    assert "".join(chunks) == "".join(blocks)
    assert [p for c in chunks for p in pretokens(c, pattern, splitter)] == pretokens("".join(blocks), pattern, splitter)


def test_safe_cut_prefers_latest_boundary_and_respects_specials():
    s = Splitter("gpt2", ["<|endoftext|>"])
    text = "one two\nthree<|endoftext|>" + "x" * 20
    assert text[: s.safe_cut(text)] == "one two\nthree<|endoftext|>"
    # A special token that may still be extended by text not seen yet is not a cut point.
    assert s.safe_cut("abc<|endoftext|>") == 0
    assert Splitter("gpt2").safe_cut("x" * 100) == 0  # no boundary at all


def test_custom_pattern_cuts_only_at_special_tokens():
    s = Splitter(r"\S+|\s+", ["<|s|>"])
    assert s.boundary_re is None
    text = "a b\nc<|s|>d e f g h"
    assert s.safe_cut(text) == text.index("d")
