"""Tokenizer files: GPT-2 import, our checksummed format, HF export; errors name the problem."""

import json
import random

import pytest
import tokenizers

from scratchlm.tokenizer import io
from scratchlm.tokenizer.pretokenize import GPT2_PATTERN
from tests.conftest import shared_data

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def gpt2():
    vocab_path, merges_path = shared_data("tokenizer/gpt2_vocab.json"), shared_data("tokenizer/gpt2_merges.txt")
    return vocab_path, merges_path, *io.load_gpt2_files(vocab_path, merges_path)


def test_byte_table_is_gpt2s():
    table = io.bytes_to_unicode()
    assert len(set(table.values())) == 256 and table[32] == "Ġ" and table[10] == "Ċ" and table[ord("!")] == "!"
    assert all(io.from_printable(io.to_printable(bytes([b]))) == bytes([b]) for b in range(256))


def test_load_gpt2_files(gpt2, tmp_path):
    _, _, vocab, merges = gpt2
    assert len(vocab) == 50257 and len(merges) == 50000
    assert vocab[50256] == EOT.encode() and merges[0] == (b" ", b"t")
    io.save_gpt2_files(tmp_path, vocab, merges)
    assert io.load_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt") == (vocab, merges)


def test_hf_export_loads_in_tokenizers_with_gpt2_ids(gpt2, tmp_path, data_path):
    vocab_path, merges_path, vocab, merges = gpt2
    io.export_hf_tokenizer_json(tmp_path / "tokenizer.json", vocab, merges, [EOT], GPT2_PATTERN)
    ours = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    ref = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(vocab_path), str(merges_path)))
    ref.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    ref.add_special_tokens([EOT])
    text = data_path("tinystories/tinystories_sample.txt").read_text(encoding="utf-8") + " Grüße 👋  \n\n x"
    assert ours.encode(text).ids == ref.encode(text).ids


def test_our_format_roundtrip_and_hash(gpt2, tmp_path):
    _, _, vocab, merges = gpt2
    io.save_tokenizer(tmp_path, vocab, merges, [EOT], GPT2_PATTERN)
    loaded = io.load_tokenizer(tmp_path)
    assert loaded == {"vocab": vocab, "merges": merges, "special_tokens": [EOT], "pattern": GPT2_PATTERN}
    shuffled = dict(random.Random(0).sample(list(vocab.items()), len(vocab)))
    assert io.tokenizer_hash(shuffled, merges, [EOT], GPT2_PATTERN) == io.tokenizer_hash(vocab, merges, [EOT], GPT2_PATTERN)
    assert io.tokenizer_hash(vocab, merges[:-1], [EOT], GPT2_PATTERN) != io.tokenizer_hash(vocab, merges, [EOT], GPT2_PATTERN)


def small_tokenizer_dir(tmp_path):
    vocab = {i: bytes([i]) for i in range(256)} | {256: EOT.encode(), 257: b"ab"}
    io.save_tokenizer(tmp_path, vocab, [(b"a", b"b")], [EOT], GPT2_PATTERN)
    return tmp_path / io.FILENAME


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (lambda c: c["merges"].__setitem__(0, "b a"), "checksum"),
        (lambda c: c.__setitem__("version", 99), "not supported"),
        (lambda c: c.__setitem__("format", "other"), "not a scratchlm tokenizer"),
    ],
)
def test_corrupted_files_are_named(tmp_path, corrupt, message):
    path = small_tokenizer_dir(tmp_path)
    content = json.loads(path.read_text(encoding="utf-8"))
    corrupt(content)
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        io.load_tokenizer(tmp_path)


def test_truncated_and_missing_files(tmp_path):
    path = small_tokenizer_dir(tmp_path)
    path.write_text(path.read_text(encoding="utf-8")[:100], encoding="utf-8")
    with pytest.raises(ValueError, match="invalid JSON"):
        io.load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError):
        io.load_tokenizer(tmp_path / "nowhere")


def test_bad_gpt2_files(tmp_path):
    (tmp_path / "v.json").write_text(json.dumps({"a": 0, "b": 0}))
    (tmp_path / "m.txt").write_text("a b\n")
    with pytest.raises(ValueError, match="used twice"):
        io.load_gpt2_files(tmp_path / "v.json", tmp_path / "m.txt")
    (tmp_path / "v.json").write_text(json.dumps({"a": 0, "b": 1}))
    with pytest.raises(ValueError, match=r"m\.txt:1: token 'ab' is not in v\.json"):
        io.load_gpt2_files(tmp_path / "v.json", tmp_path / "m.txt")
    (tmp_path / "m.txt").write_text("a b c\n")
    with pytest.raises(ValueError, match="two tokens"):
        io.load_gpt2_files(tmp_path / "v.json", tmp_path / "m.txt")


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(io.json, "dump", boom)
    with pytest.raises(RuntimeError):
        io.save_tokenizer(tmp_path, {i: bytes([i]) for i in range(256)}, [], [], GPT2_PATTERN)
    assert list(tmp_path.iterdir()) == []
