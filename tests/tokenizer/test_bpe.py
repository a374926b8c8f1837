"""Encoding equals tiktoken and HF `tokenizers` on the GPT-2 vocabulary; decoding round-trips."""

import gzip
import lzma
import pickle
import tracemalloc

import pytest
import tiktoken
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.tokenizer.bpe import Tokenizer, _bpe_heap
from scratchlm.tokenizer.pretokenize import GPT2_PATTERN, GPT4_PATTERN
from scratchlm.tokenizer.train import train_bpe
from tests.conftest import shared_data

EOT = "<|endoftext|>"
TRICKY = "Hello 👋🏽 wörld  \n\n  it's   '''' x" + "=" * 700 + " " * 300 + "\u3000日本語 \x1c a \x1d  b\r\n\r\nend  "


@pytest.fixture(scope="module")
def gpt2_files():
    return shared_data("tokenizer/gpt2_vocab.json"), shared_data("tokenizer/gpt2_merges.txt")


@pytest.fixture(scope="module", params=[GPT2_PATTERN, GPT4_PATTERN], ids=["gpt2", "gpt4"])
def pair(request, gpt2_files):
    """(ours, tiktoken) over the GPT-2 vocabulary with one pre-tokenization pattern."""
    ours = Tokenizer.from_files(*gpt2_files, special_tokens=[EOT], pattern=request.param)
    ranks = {ours.vocab[i]: i for i in range(50256)}  # GPT-2 ids are merge ranks
    ref = tiktoken.Encoding("gpt2-offline", pat_str=request.param, mergeable_ranks=ranks, special_tokens={EOT: 50256})
    return ours, ref


def real_texts(data_path):
    texts = [data_path(p).read_text(encoding="utf-8") for p in ("tinystories/tinystories_sample.txt", "tokenizer/german.txt", "tokenizer/address.txt")]
    with gzip.open(data_path("text/wikitext2_raw_test.txt.gz"), "rt", encoding="utf-8", newline="") as f:
        texts.append(f.read()[:300_000])
    with lzma.open(data_path("pretrain/cppdocs-valid.txt.xz"), "rt", encoding="utf-8", newline="") as f:
        texts.append(f.read(300_000))
    return texts + [TRICKY]


def test_equals_tiktoken_on_real_text(pair, data_path):
    ours, ref = pair
    for text in real_texts(data_path):
        ids = ours.encode(text)
        assert ids == ref.encode(text, allowed_special="all")
        assert ours.decode(ids) == text


def test_equals_hf_tokenizers_gpt2(gpt2_files, data_path):
    ours = Tokenizer.from_files(*gpt2_files, special_tokens=[EOT])
    hf = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(gpt2_files[0]), str(gpt2_files[1])))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.add_special_tokens([EOT])
    for text in real_texts(data_path)[:4]:
        assert ours.encode(text) == hf.encode(text).ids


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_roundtrip_and_parity_on_any_unicode(pair, text):
    ours, ref = pair
    ids = ours.encode(text)
    assert ours.decode(ids) == text
    assert ids == ref.encode(text, allowed_special="all")


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=257, max_size=1500) | st.text(alphabet="ab =-\n", min_size=257, max_size=1500).map(str.encode))
def test_heap_merge_equals_simple_merge(pair, data):
    ours, _ = pair
    ids = [ours._byte_ids[b] for b in data]
    simple = ours._bpe.__func__  # the short-piece loop, forced on a long piece below
    import scratchlm.tokenizer.bpe as bpe

    limit, bpe.LONG_PIECE = bpe.LONG_PIECE, 10**9
    try:
        expected = simple(ours, data)
    finally:
        bpe.LONG_PIECE = limit
    assert _bpe_heap(ids, ours._ranks, ours._merged) == expected


def test_encode_iterable_equals_encode_with_bounded_memory(pair, data_path, tmp_path):
    ours, _ = pair
    text = data_path("tinystories/tinystories_valid_head.txt").read_text(encoding="utf-8")
    path = tmp_path / "big.txt"
    path.write_text((text + EOT) * 3, encoding="utf-8")
    with open(path, encoding="utf-8", newline="") as f:
        streamed = list(ours.encode_iterable(f))
    assert streamed == ours.encode((text + EOT) * 3)

    def repeated(n):  # n * 0.8 MB of text, produced lazily
        for _ in range(n):
            yield from text.splitlines(keepends=True)

    ours.encode(text)  # warm the caches so only streaming state is measured
    tracemalloc.start()
    count = sum(1 for _ in ours.encode_iterable(repeated(10)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # Each seam between repeats tokenizes like the one in text + text ("\n\n" before a letter splits).
    per_repeat = len(ours.encode(text + text)) - len(ours.encode(text))
    assert count == len(ours.encode(text)) + 9 * per_repeat
    assert peak < 4 << 20, f"streaming 8 MB used {peak / 2**20:.1f} MiB"


def test_bounded_caches_stay_exact(pair, data_path, monkeypatch):
    """Caches cleared mid-text (tiny limit) must not change or lose anything."""
    import scratchlm.tokenizer.bpe as bpe

    ours, ref = pair
    text = real_texts(data_path)[3][:50_000]
    monkeypatch.setattr(bpe, "CACHE_LIMIT", 50)
    fresh = Tokenizer(ours.vocab, ours.merges, ours.special_tokens, ours.pattern)
    assert fresh.encode(text) == ref.encode(text, allowed_special="all")
    assert fresh.encode(text) == ref.encode(text, allowed_special="all")  # again, with full caches
    assert len(fresh._unit_cache) <= 50 + len(text.split(" ")) and len(fresh._piece_cache) <= 50 + len(text.split(" "))


def test_special_tokens_longest_wins_and_never_merge(gpt2_files):
    double = EOT + EOT
    tok = Tokenizer.from_files(*gpt2_files, special_tokens=[EOT, double])
    ids = tok.encode(f"a{double}b{EOT}c")
    assert ids[1] == tok.special_ids[double] and ids[3] == tok.special_ids[EOT]
    assert tok.special_ids[EOT] == 50256 and tok.special_ids[double] == 50257  # new special appended
    assert tok.decode(ids) == f"a{double}b{EOT}c"
    plain = Tokenizer.from_files(*gpt2_files)
    assert len(plain.encode(EOT)) > 1  # without the special, it is ordinary text


def test_decode_errors_and_replacement(gpt2_files):
    tok = Tokenizer.from_files(*gpt2_files)
    assert tok.decode([tok._byte_ids[0xE2]]) == "\ufffd"  # a lone UTF-8 lead byte
    for bad in ([50257], [-1], [10**9]):
        with pytest.raises(ValueError, match="out of range"):
            tok.decode(bad)
    with pytest.raises(ValueError, match="integers"):
        tok.decode(["7"])


def test_construction_errors():
    byte_vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ValueError, match="single-byte"):
        Tokenizer({i: bytes([i]) for i in range(255)}, [])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        Tokenizer(byte_vocab, [(b"a", b"b")])
    with pytest.raises(ValueError, match="without gaps"):
        Tokenizer({**byte_vocab, 300: b"ab"}, [])
    with pytest.raises(ValueError, match="list of strings"):
        Tokenizer(byte_vocab, [], special_tokens=EOT)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_trained_tokenizer_roundtrips_saves_pickles_and_exports(pattern, data_path, tmp_path):
    path = data_path("tinystories/tinystories_sample.txt")
    vocab, merges = train_bpe(path, 400, [EOT], pattern=pattern, progress=False)
    tok = Tokenizer(vocab, merges, [EOT], pattern=pattern)
    text = path.read_text(encoding="utf-8")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) / 1.5  # it compresses

    tok.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.encode(text) == ids and loaded.hash == tok.hash
    assert pickle.loads(pickle.dumps(tok)).encode(text) == ids

    tok.export_hf(tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.encode(text).ids == ids
    assert hf.decode(ids, skip_special_tokens=False) == text
