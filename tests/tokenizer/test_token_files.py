"""Parallel encoding into token files equals serial encoding; files are checked when read back."""

import json

import numpy as np
import pytest

from scratchlm.tokenizer.bpe import Tokenizer
from scratchlm.tokenizer.token_files import encode_files, read_tokens, sidecar_path, token_dtype, token_stats
from scratchlm.tokenizer.train import train_bpe

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("c") / "c.txt"
    path.write_text("the cat sat on the mat. " * 50 + EOT + "dogs run fast! " * 50, encoding="utf-8")
    return Tokenizer(*train_bpe(path, 300, [EOT], progress=False), [EOT])


def test_parallel_encoding_equals_serial(tok, data_path, tmp_path):
    text = data_path("tinystories/tinystories_valid_head.txt").read_text(encoding="utf-8")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(text * 2, encoding="utf-8")  # ~1.6 MB: several 1 MB ranges
    b.write_text(EOT + "tail text", encoding="utf-8")
    meta = encode_files(tok, [a, b], tmp_path / "tokens.bin", num_workers=2, range_mb=1, progress=False)
    ids = read_tokens(tmp_path / "tokens.bin", tokenizer_sha256=tok.hash)
    expected = tok.encode(text * 2) + tok.encode(EOT + "tail text")
    assert ids.dtype == np.uint16 and meta["count"] == len(expected)
    assert ids.tolist() == expected
    assert json.loads(sidecar_path(tmp_path / "tokens.bin").read_text())["tokenizer_sha256"] == tok.hash


def test_read_tokens_detects_problems(tok, tmp_path):
    src = tmp_path / "s.txt"
    src.write_text("the cat sat", encoding="utf-8")
    out = tmp_path / "t.bin"
    encode_files(tok, [src], out, num_workers=1, progress=False)
    with pytest.raises(ValueError, match="was encoded with tokenizer"):
        read_tokens(out, tokenizer_sha256="0" * 64)
    out.write_bytes(out.read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_tokens(out)
    sidecar_path(out).unlink()
    with pytest.raises(FileNotFoundError, match="sidecar"):
        read_tokens(out)


def test_failed_encode_leaves_nothing(tok, tmp_path):
    with pytest.raises(FileNotFoundError):
        encode_files(tok, [tmp_path / "missing.txt"], tmp_path / "t.bin", progress=False)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff")
    with pytest.raises(ValueError, match="UTF-8"):
        encode_files(tok, [bad], tmp_path / "t.bin", num_workers=1, progress=False)
    assert list(tmp_path.glob("t.bin*")) == [] and list(tmp_path.glob(".t.bin*")) == []


def test_dtype_and_stats(tok):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    ids = tok.encode("the cat sat on the mat")
    stats = token_stats(tok, ids, len(b"the cat sat on the mat"))
    assert stats["tokens"] == len(ids) and stats["bytes_per_token"] == pytest.approx(22 / len(ids))
    assert stats["vocab_used"] == len(set(ids)) and sum(t["count"] for t in stats["top_tokens"]) <= len(ids)
