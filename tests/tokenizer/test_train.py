"""BPE training equals the naive recount-every-step reference, merge for merge."""

import gzip
import logging

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratchlm.tokenizer import io
from scratchlm.tokenizer.corpus import check_inputs, iter_blocks, plan_ranges
from scratchlm.tokenizer.pretokenize import GPT2_PATTERN, GPT4_PATTERN, Splitter
from scratchlm.tokenizer.train import BPETrainConfig, count_pretokens, learn_bpe, train_bpe
from tests.tokenizer.naive_bpe import naive_train_bpe

EOT = "<|endoftext|>"


def write(tmp_path, text, name="corpus.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def from_printable(token: str) -> bytes:
    decoder = {c: b for b, c in io.bytes_to_unicode().items()}
    return bytes(decoder[c] for c in token)


def test_matches_cs336_reference_merges(data_path):
    vocab, merges = train_bpe(data_path("text/corpus.en"), 500, [EOT], progress=False)
    lines = data_path("tokenizer/train-bpe-reference-merges.txt").read_text(encoding="utf-8").splitlines()
    expected = [tuple(from_printable(t) for t in line.split(" ")) for line in lines]
    assert merges == expected
    assert len(vocab) == 500 and vocab[256] == EOT.encode()


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN])
@pytest.mark.parametrize(
    "relpath,vocab_size",
    [("tinystories/tinystories_sample.txt", 400), ("tokenizer/german.txt", 300), ("tokenizer/address.txt", 330)],
)
def test_matches_naive_on_real_text(data_path, tmp_path, relpath, vocab_size, pattern):
    text = data_path(relpath).read_text(encoding="utf-8")
    _, expected = naive_train_bpe(text, vocab_size, [EOT], pattern)
    vocab, merges = train_bpe(write(tmp_path, text), vocab_size, [EOT], pattern=pattern, progress=False)
    assert merges == expected
    assert len(vocab) == 256 + 1 + len(merges)


def test_matches_naive_on_wikitext_slice_with_two_workers(data_path, tmp_path):
    with gzip.open(data_path("text/wikitext2_raw_test.txt.gz"), "rt", encoding="utf-8", newline="") as f:
        text = f.read()[:20_000]
    _, expected = naive_train_bpe(text, 600, [], GPT2_PATTERN)
    _, merges = train_bpe([write(tmp_path, text[:9000], "a.txt"), write(tmp_path, text[9000:], "b.txt")], 600, [], num_workers=2, progress=False)
    # Two files are pre-tokenized separately: the reference sees the same two texts.
    _, expected = naive_train_bpe(text[:9000] + EOT + text[9000:], 601, [EOT], GPT2_PATTERN)
    assert merges == expected


UNICODE_TEXT = st.lists(st.sampled_from(list("aabbc é😀'  \n\t1") + ["'s", EOT]), max_size=300).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=UNICODE_TEXT, extra=st.integers(1, 40), pattern=st.sampled_from([GPT2_PATTERN, GPT4_PATTERN]))
def test_matches_naive_property(tmp_path, text, extra, pattern):
    logging.disable(logging.WARNING)  # "no pair left" is expected on tiny corpora
    try:
        _, expected = naive_train_bpe(text, 257 + extra, [EOT], pattern)
        # The file ends in a special token and "x", so it is never empty; the "x" is taken back out.
        config = BPETrainConfig(vocab_size=257 + extra, special_tokens=[EOT], pattern=pattern, num_workers=1, progress=False)
        counts = count_pretokens([write(tmp_path, text + EOT + "x")], config)
        counts["x"] -= 1
        _, merges = learn_bpe(+counts, 257 + extra, [EOT])
    finally:
        logging.disable(logging.NOTSET)
    assert merges == expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.sampled_from(list("ab \n'1.") + [EOT]), min_size=1, max_size=400).map("".join), target=st.integers(1, 64))
def test_byte_ranges_partition_text_exactly(tmp_path, text, target):
    path = write(tmp_path, text)
    splitter = Splitter("gpt2", [EOT], on_bytes=True)
    ranges = plan_ranges(check_inputs([path]), splitter, target)
    assert "".join(t for r in ranges for t in iter_blocks(r)) == text
    text_splitter = Splitter("gpt2", [EOT])

    def pretokens(t):
        return [p for piece in text_splitter.split_specials(t) for p in regex.findall(GPT2_PATTERN, piece)]

    assert [p for r in ranges for p in pretokens("".join(iter_blocks(r)))] == pretokens(text)


def test_deterministic_across_runs_and_workers(data_path):
    path = data_path("tinystories/tinystories_valid_head.txt")
    one = train_bpe(path, 1000, [EOT], num_workers=1, progress=False)
    two = train_bpe(path, 1000, [EOT], num_workers=2, progress=False)
    assert one == two


def test_compressed_input_equals_plain(tmp_path, data_path):
    text = data_path("tokenizer/address.txt").read_text(encoding="utf-8")
    plain = write(tmp_path, text)
    packed = tmp_path / "corpus.txt.gz"
    with gzip.open(packed, "wt", encoding="utf-8", newline="") as f:
        f.write(text)
    assert train_bpe(plain, 300, [], progress=False) == train_bpe(packed, 300, [], progress=False)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(vocab_size=100, special_tokens=[EOT]), "too small"),
        (dict(vocab_size=300, special_tokens=[EOT, EOT]), "unique"),
        (dict(vocab_size=300, special_tokens=[""]), "non-empty"),
        (dict(vocab_size=300, special_tokens=[], pattern="("), "neither"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_bpe(write(tmp_path, "hello world"), **kwargs)


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        train_bpe(tmp_path / "missing.txt", 300, [])
    with pytest.raises(ValueError, match="empty corpus"):
        train_bpe(write(tmp_path, ""), 300, [])
    with pytest.raises(ValueError, match="empty corpus"):
        train_bpe(write(tmp_path, EOT * 3), 300, [EOT], progress=False)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe nope")
    with pytest.raises(ValueError, match="invalid UTF-8"):
        train_bpe(bad, 300, [], progress=False)
