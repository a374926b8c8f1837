"""Tokenizer files: GPT-2 import, our checksummed format, HF export; errors name the file and the problem.

The HF export is checked against independent references on real and generated text: HF `tokenizers`
reading the GPT-2 files itself (GPT-2 pattern) and tiktoken built from the GPT-2 ranks (GPT-4 pattern).
"""

import gzip
import json
import random

import pytest
import tiktoken
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.tokenizer import io
from scratchlm.tokenizer.pretokenize import GPT2_PATTERN, GPT4_PATTERN
from tests.conftest import shared_data

EOT = "<|endoftext|>"
# Pieces where pre-tokenizers tend to disagree: contractions in both cases, whitespace runs of every
# kind before words and at the end, digit runs, emoji with modifiers, CJK, and almost-special tokens.
CONTRACTIONS = ["'s", "'S", "'ll", "'VE", "''"]
SPACES = [" ", "   ", "\n", "\n\n", "\r\n", "\t", " \n ", "\u3000", "\xa0", "\x85", "\u2028"]
OTHERS = ["👋🏽", "🤖", "日本語", "ü", "Ḁ", "123456", "1,000", " x", "x", "!!", EOT, "<|endoftext", "|>"]
FRAGMENTS = CONTRACTIONS + SPACES + OTHERS
TEXTS = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(st.characters(codec="utf-8"), max_size=6)), max_size=24
).map("".join)


# ---------------------------------------------------------------------------------------------
# fixtures: the real GPT-2 files, our exports of them, and the references


@pytest.fixture(scope="module")
def gpt2_paths():
    return shared_data("tokenizer/gpt2_vocab.json"), shared_data("tokenizer/gpt2_merges.txt")


@pytest.fixture(scope="module")
def gpt2(gpt2_paths):
    return io.load_gpt2_files(*gpt2_paths)


@pytest.fixture(scope="module")
def exported(gpt2, tmp_path_factory):
    """Our tokenizer.json of the GPT-2 vocabulary, one per pattern, loaded by HF `tokenizers`."""
    out = {}
    for name, pattern in [("gpt2", GPT2_PATTERN), ("gpt4", GPT4_PATTERN)]:
        path = tmp_path_factory.mktemp(name) / "tokenizer.json"
        io.export_hf_tokenizer_json(path, *gpt2, [EOT], pattern)
        out[name] = tokenizers.Tokenizer.from_file(str(path))
    return out


@pytest.fixture(scope="module")
def hf_reference(gpt2_paths):
    ref = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(*map(str, gpt2_paths)))
    ref.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    ref.decoder = tokenizers.decoders.ByteLevel()
    ref.add_special_tokens([EOT])
    return ref


@pytest.fixture(scope="module")
def tiktoken_gpt4(gpt2):
    vocab, _ = gpt2
    ranks = {b: i for i, b in vocab.items() if i != 50256}  # GPT-2 ids are ranks: 256 bytes, then merges
    return tiktoken.Encoding(
        "gpt2-ranks-gpt4-pattern", pat_str=GPT4_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256}
    )


@pytest.fixture(scope="module")
def real_texts():
    paths = ["tokenizer/address.txt", "tokenizer/german.txt", "tinystories/tinystories_sample.txt"]
    texts = {p: shared_data(p).read_text(encoding="utf-8") for p in paths}
    assert EOT in texts["tinystories/tinystories_sample.txt"]
    with gzip.open(shared_data("text/wikitext2_raw_test.txt.gz"), "rt", encoding="utf-8", newline="") as f:
        texts["wikitext2"] = f.read(200_000)
    return texts


def random_tokenizer(seed: int, n_merges: int = 40) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """All 256 bytes plus random merges of existing tokens (each merge makes a new token)."""
    rng = random.Random(seed)
    vocab = {i: bytes([i]) for i in range(256)}
    merges = []
    while len(merges) < n_merges:
        a, b = rng.choice(list(vocab.values())), rng.choice(list(vocab.values()))
        if a + b not in vocab.values():
            vocab[len(vocab)] = a + b
            merges.append((a, b))
    return vocab, merges


# ---------------------------------------------------------------------------------------------
# byte-level alphabet


def test_byte_table_is_gpt2s():
    table = io.bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[32] == "Ġ" and table[10] == "Ċ" and table[0] == "Ā" and table[ord("!")] == "!" and table[0xAD] == "Ń"
    assert sum(b == ord(c) for b, c in table.items()) == 188  # printable bytes stay themselves
    assert [ord(c) for c in table.values() if ord(c) >= 256] == list(range(256, 256 + 68))  # the rest, in order
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert io.unicode_to_bytes() == {c: b for b, c in table.items()}
    every_byte = bytes(range(256))
    assert io.from_printable(io.to_printable(every_byte)) == every_byte
    with pytest.raises(ValueError, match="not in the byte-level alphabet"):
        io.from_printable("a b")


# ---------------------------------------------------------------------------------------------
# GPT-2 files


def test_load_real_gpt2_files(gpt2, tmp_path):
    vocab, merges = gpt2
    assert len(vocab) == 50257 and len(merges) == 50000 and sorted(vocab) == list(range(50257))
    assert vocab[50256] == EOT.encode() and merges[0] == (b" ", b"t") and vocab[220] == b" " and vocab[188] == b"\x00"
    assert {vocab[i] for i in range(256)} == {bytes([b]) for b in range(256)}
    assert all(vocab[256 + rank] == a + b for rank, (a, b) in enumerate(merges))  # hence ids are ranks
    paths = io.save_gpt2_files(tmp_path, vocab, merges)
    assert paths == (tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert io.load_gpt2_files(*paths) == (vocab, merges)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "vocab.json"]  # no temp files left


def test_gpt2_files_header_blank_lines_and_added_tokens(tmp_path):
    # "<|🤖|>" uses a character outside the byte-level alphabet (not a byte-level string): kept as UTF-8.
    keys = {io.to_printable(bytes([b])): b for b in range(256)} | {"Ġa": 256, "<|🤖|>": 257}
    (tmp_path / "v.json").write_text(json.dumps(keys), encoding="utf-8")
    (tmp_path / "m.txt").write_text("#version: 0.2\r\n\r\nĠ a\r\n\n", encoding="utf-8")
    vocab, merges = io.load_gpt2_files(tmp_path / "v.json", tmp_path / "m.txt")
    assert vocab[256] == b" a" and vocab[257] == "<|🤖|>".encode() and merges == [(b" ", b"a")]
    io.save_gpt2_files(tmp_path / "out", vocab, merges)
    assert io.load_gpt2_files(tmp_path / "out" / "vocab.json", tmp_path / "out" / "merges.txt") == (vocab, merges)


SMALL_VOCAB = {"a": 0, "b": 1, "ab": 2}


@pytest.mark.parametrize(
    "vocab_text,merges_text,error,message",
    [
        (None, "a b\n", FileNotFoundError, r"not found: .*v\.json"),
        (json.dumps(SMALL_VOCAB), None, FileNotFoundError, r"not found: .*m\.txt"),
        ('{"a": 0, "b": 1', "a b\n", ValueError, r"v\.json: invalid JSON at line 1"),
        ('["a", "b"]', "a b\n", ValueError, r"v\.json: expected a JSON object"),
        ('{"a": 0, "b": "1"}', "a b\n", ValueError, r"v\.json: token 'b' has id '1'"),
        ('{"a": 0, "b": true}', "a b\n", ValueError, r"v\.json: token 'b' has id True"),
        ('{"a": 0, "b": -1}', "a b\n", ValueError, r"v\.json: token 'b' has id -1"),
        ('{"a": 0, "b": 0}', "a b\n", ValueError, r"v\.json: id 0 is used twice"),
        ('{"a": 0, "a": 1}', "", ValueError, r"v\.json: tokens 'a' and 'a' both stand for"),
        (json.dumps(SMALL_VOCAB), "#version: 0.2\na b c\n", ValueError, r"m\.txt:2: expected two tokens"),
        (json.dumps(SMALL_VOCAB), "a b\nab\n", ValueError, r"m\.txt:2: expected two tokens"),
        (json.dumps(SMALL_VOCAB), "a  b\n", ValueError, r"m\.txt:1: expected two tokens"),
        (json.dumps(SMALL_VOCAB), "a c\n", ValueError, r"m\.txt:1: token 'c' is not in .*v\.json"),
        (json.dumps(SMALL_VOCAB), "a b\nb a\n", ValueError, r"m\.txt:2: merged token 'ba' is not in .*v\.json"),
        (json.dumps(SMALL_VOCAB), "a\tb\n", ValueError, r"m\.txt:1: expected two tokens"),
    ],
)
def test_bad_gpt2_files_are_named(tmp_path, vocab_text, merges_text, error, message):
    for name, text in [("v.json", vocab_text), ("m.txt", merges_text)]:
        if text is not None:
            (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(error, match=message):
        io.load_gpt2_files(tmp_path / "v.json", tmp_path / "m.txt")


def test_save_gpt2_files_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="same bytes"):
        io.save_gpt2_files(tmp_path, {0: b"a", 1: b"a"}, [])
    with pytest.raises(ValueError, match="not in the vocab"):
        io.save_gpt2_files(tmp_path, {0: b"a", 1: b"b"}, [(b"a", b"b")])
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# HF export, against independent references


def check_hf(ours: tokenizers.Tokenizer, encode_ref, text: str) -> None:
    ids = ours.encode(text).ids
    assert ids == encode_ref(text), f"ids differ on {text[:80]!r}"
    assert ours.decode(ids, skip_special_tokens=False) == text


def test_export_gpt2_pattern_matches_hf_on_real_text(exported, hf_reference, real_texts):
    for text in real_texts.values():
        check_hf(exported["gpt2"], lambda t: hf_reference.encode(t).ids, text)


def test_export_gpt4_pattern_matches_tiktoken_on_real_text(exported, tiktoken_gpt4, real_texts):
    for text in real_texts.values():
        check_hf(exported["gpt4"], lambda t: tiktoken_gpt4.encode(t, allowed_special="all"), text)


@settings(max_examples=300, deadline=None)
@given(text=TEXTS)
def test_export_matches_references_on_generated_text(exported, hf_reference, tiktoken_gpt4, text):
    check_hf(exported["gpt2"], lambda t: hf_reference.encode(t).ids, text)
    check_hf(exported["gpt4"], lambda t: tiktoken_gpt4.encode(t, allowed_special="all"), text)


def test_export_keeps_special_ids_and_only_regex_matches(tmp_path):
    vocab = {i: bytes([i]) for i in range(256)} | {256: "<|ñ|>".encode(), 257: b"ab"}
    path = io.export_hf_tokenizer_json(tmp_path / "t.json", vocab, [(b"a", b"b")], ["<|ñ|>"], r"\p{L}+| ?[^\s\p{L}]+")
    hf = tokenizers.Tokenizer.from_file(str(path))
    # A non-ASCII special token keeps its id (HF would give it a new one were it in the model vocab under
    # its byte-level spelling); the pattern drops the whitespace it does not match, as regex.findall does.
    assert hf.encode("ab<|ñ|> \n ab").ids == [257, 256, 257]
    assert json.loads(path.read_text(encoding="utf-8"))["added_tokens"][0]["id"] == 256


def test_export_refuses_vocab_hf_would_mishandle(tmp_path):
    vocab, merges = random_tokenizer(0, n_merges=3)
    with pytest.raises(ValueError, match="lacks 1 single-byte tokens"):
        io.export_hf_tokenizer_json(
            tmp_path / "t.json",
            {i: b for i, b in vocab.items() if b != b"\x00"} | {0: b"\x00\x00"},
            [],
            [],
            GPT2_PATTERN,
        )
    with pytest.raises(ValueError, match="both export as"):  # a special token spelled like the byte-level " a"
        io.export_hf_tokenizer_json(
            tmp_path / "t.json",
            vocab | {len(vocab): b" a", len(vocab) + 1: "Ġa".encode()},
            merges,
            ["Ġa"],
            GPT2_PATTERN,
        )
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# our format


@pytest.mark.parametrize("seed", range(5))
def test_our_format_round_trips_random_tokenizers(tmp_path, seed):
    vocab, merges = random_tokenizer(seed)
    vocab[len(vocab)] = "<|ñ|>".encode()
    path = io.save_tokenizer(tmp_path, vocab, merges, ["<|ñ|>"], GPT4_PATTERN)
    assert path == tmp_path / io.FILENAME
    expected = {"vocab": vocab, "merges": merges, "special_tokens": ["<|ñ|>"], "pattern": GPT4_PATTERN}
    assert io.load_tokenizer(tmp_path) == io.load_tokenizer(path) == expected


def test_our_format_round_trips_gpt2_and_is_readable(gpt2, tmp_path):
    vocab, merges = gpt2
    vocab = vocab | {50257: b"<|pad|>"}
    io.save_tokenizer(tmp_path, vocab, merges, [EOT, "<|pad|>"], GPT2_PATTERN)
    loaded = io.load_tokenizer(tmp_path)
    assert loaded == {"vocab": vocab, "merges": merges, "special_tokens": [EOT, "<|pad|>"], "pattern": GPT2_PATTERN}
    content = json.loads((tmp_path / io.FILENAME).read_text(encoding="utf-8"))
    assert content["format"] == "scratchlm.bpe" and content["version"] == 1
    assert content["special_tokens"] == {EOT: 50256, "<|pad|>": 50257}
    assert content["vocab"]["220"] == "Ġ" and content["merges"][0] == "Ġ t"
    assert content["sha256"] == io.tokenizer_hash(vocab, merges, [EOT, "<|pad|>"], GPT2_PATTERN)


def test_hash_ignores_dict_order_and_sees_every_change():
    vocab, merges = random_tokenizer(1, n_merges=30)
    vocab[len(vocab)] = EOT.encode()
    base = io.tokenizer_hash(vocab, merges, [EOT], GPT2_PATTERN)
    shuffled = dict(random.Random(0).sample(list(vocab.items()), len(vocab)))
    assert io.tokenizer_hash(shuffled, merges, [EOT], GPT2_PATTERN) == base
    for rank in range(len(merges)):
        swapped = merges[:rank] + [merges[rank][::-1]] + merges[rank + 1 :]
        assert io.tokenizer_hash(vocab, swapped, [EOT], GPT2_PATTERN) != base, rank
        assert io.tokenizer_hash(vocab, merges[:rank] + merges[rank + 1 :], [EOT], GPT2_PATTERN) != base, rank
    assert io.tokenizer_hash(vocab, merges[::-1], [EOT], GPT2_PATTERN) != base
    assert io.tokenizer_hash(vocab, merges, [EOT], GPT4_PATTERN) != base
    assert io.tokenizer_hash(vocab, merges, [], GPT2_PATTERN) != base
    assert io.tokenizer_hash(vocab | {0: b"\x00\x00", 300: b"\x00"}, merges, [EOT], GPT2_PATTERN) != base


@pytest.fixture
def saved(tmp_path):
    """A small valid file, and a function that rewrites it (re-signing the checksum when asked)."""
    vocab = {i: bytes([i]) for i in range(256)} | {256: EOT.encode(), 257: b"ab"}
    path = io.save_tokenizer(tmp_path, vocab, [(b"a", b"b")], [EOT], GPT2_PATTERN)

    def rewrite(edit, resign: bool = False) -> None:
        content = json.loads(path.read_text(encoding="utf-8"))
        edit(content)
        if resign:  # a valid checksum, so the loader's later checks are what must catch the edit
            fields = {k: content[k] for k in ("pattern", "special_tokens", "vocab", "merges")}
            content["sha256"] = io._sha256(fields)
        path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")

    return path, rewrite


@pytest.mark.parametrize(
    "edit,resign,message",
    [
        (lambda c: c["merges"].__setitem__(0, "b a"), False, "checksum mismatch: the file is corrupted"),
        (lambda c: c["vocab"].__setitem__("97", "b"), False, "corrupted"),
        (lambda c: c.__setitem__("sha256", "0" * 64), False, "corrupted"),
        (lambda c: c.__setitem__("pattern", GPT4_PATTERN), False, "corrupted"),
        (lambda c: c.__setitem__("version", 99), False, "version 99 is not supported: written by a newer"),
        (lambda c: c.__setitem__("version", "1"), False, "version '1' is not a positive integer"),
        (lambda c: c.__setitem__("format", "other"), False, "not a scratchlm tokenizer file"),
        (lambda c: c.pop("merges"), False, "field 'merges' is missing"),
        (
            lambda c: c.__setitem__("merges", ["b a"]),
            True,
            r"merge #0 \(b'b', b'a'\) uses b'ba', which is not in the vocab",
        ),
        (lambda c: c.__setitem__("merges", ["a c d"]), True, "not two tokens separated by one space"),
        (lambda c: c["vocab"].__setitem__("300", "x"), True, "vocab ids must be exactly 0..258"),
        (lambda c: c["vocab"].__setitem__("0257", c["vocab"].pop("257")), True, "not a canonical"),
        (lambda c: c["vocab"].__setitem__("257", "a b"), True, "not in the byte-level alphabet"),
        (lambda c: c["special_tokens"].__setitem__(EOT, 257), True, "has id 257, but its bytes are token 256"),
        (lambda c: c["special_tokens"].__setitem__("<|x|>", 0), True, r"special token '<\|x\|>' is not in the vocab"),
        (lambda c: c.__setitem__("pattern", "(["), True, "unterminated"),
    ],
)
def test_bad_files_are_named(saved, edit, resign, message):
    path, rewrite = saved
    rewrite(edit, resign)
    with pytest.raises(ValueError, match=message) as info:
        io.load_tokenizer(path.parent)
    assert str(path) in str(info.value)


def test_truncated_and_missing_files(saved):
    path, _ = saved
    path.write_text(path.read_text(encoding="utf-8")[:500], encoding="utf-8")
    with pytest.raises(ValueError, match=r"scratchlm_tokenizer\.json: invalid JSON .*truncated"):
        io.load_tokenizer(path.parent)
    for missing in (path.parent / "nowhere", path.parent / "nowhere.json"):
        # Both kinds, so callers can catch "no file" or "no usable tokenizer" as they need.
        for kind in (FileNotFoundError, ValueError):
            with pytest.raises(kind, match="not found: .*nowhere"):
                io.load_tokenizer(missing)


def test_upgrades_run_in_order(saved, monkeypatch):
    path, _ = saved
    expected = io.load_tokenizer(path)
    seen = []

    def step(old):
        def upgrade(content):
            seen.append(old)
            return content | {"version": old + 1}

        return upgrade

    monkeypatch.setattr(io, "VERSION", 3)
    monkeypatch.setattr(io, "_UPGRADES", {2: step(2), 1: step(1)})
    assert io.load_tokenizer(path) == expected and seen == [1, 2]
    monkeypatch.setattr(io, "_UPGRADES", {1: step(1)})
    with pytest.raises(ValueError, match="version 2 is not supported: no upgrade to version 3"):
        io.load_tokenizer(path)


def test_failed_save_leaves_the_old_file_and_no_temp_file(saved, monkeypatch):
    path, _ = saved
    before = path.read_bytes()

    def dump_half_then_fail(obj, f, **kwargs):
        f.write(json.dumps(obj)[:1000])
        raise OSError("disk full")

    monkeypatch.setattr(io.json, "dump", dump_half_then_fail)
    vocab, merges = random_tokenizer(2)
    with pytest.raises(OSError, match="disk full"):
        io.save_tokenizer(path.parent, vocab, merges, [], GPT2_PATTERN)
    assert [p.name for p in path.parent.iterdir()] == [io.FILENAME] and path.read_bytes() == before
    with pytest.raises(OSError, match="disk full"):
        io.save_tokenizer(path.parent / "new", vocab, merges, [], GPT2_PATTERN)
    assert list((path.parent / "new").iterdir()) == []


def test_save_refuses_invalid_tokenizers(tmp_path):
    vocab, merges = random_tokenizer(3)
    cases = [
        ({i + 1: b for i, b in vocab.items()}, merges, [], "vocab ids must be exactly"),
        (vocab, merges, [EOT], "not in the vocab"),
        (vocab, merges + [(b"\xff\xff\xff", b"\x00")], [], "not in the vocab"),
        (vocab | {len(vocab): b"<s>"}, merges, ["<s>", "<s>"], "not unique"),
    ]
    for bad_vocab, bad_merges, specials, message in cases:
        with pytest.raises(ValueError, match=message):
            io.save_tokenizer(tmp_path, bad_vocab, bad_merges, specials, GPT2_PATTERN)
    assert list(tmp_path.iterdir()) == []
