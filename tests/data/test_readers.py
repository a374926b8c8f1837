"""Readers on the real WARC/WET/JSONL samples, and counted skips (never a crash) on broken input."""

from __future__ import annotations

import gzip
import json
import random

import pytest
import zstandard

from scratchlm.data.readers import (
    ReadStats,
    decode_http_body,
    detect_format,
    parse_http_response,
    read_documents,
    write_warc,
)
from tests.conftest import shared_data

WARC = "webcrawl/warc"


def read(path, fmt="auto"):
    stats = ReadStats()
    docs = list(read_documents(path, fmt, stats))
    return docs, stats


@pytest.mark.parametrize("name, responses", [
    ("CC-MAIN-2020-34-sample.warc.gz", 16),  # MANIFEST: 16 response records (and 17 request, 16 metadata)
    ("dolma-sample-0000.warc.gz", 22),
    ("dolma-sample-0001.warc.gz", 15),
    ("warcio-example.warc.gz", 1),
    ("whirlwind-CC-MAIN-2024-22.warc.gz", 1),
])
def test_warc_samples_give_every_html_response(name, responses):
    docs, stats = read(shared_data(f"{WARC}/{name}"))
    assert (stats.records, stats.documents, dict(stats.skipped)) == (responses, responses, {})
    assert all(d.html and not d.text and d.metadata["content_type"] == "text/html" for d in docs)
    assert len({d.id for d in docs}) == len(docs) and docs[0].id == f"{name}#1"


def test_warc_metadata_urls_and_charsets():
    docs, _ = read(shared_data(f"{WARC}/CC-MAIN-2020-34-sample.warc.gz"))
    assert docs[1].url == "http://01spb.ru/company/" and docs[1].metadata["charset"] == "windows-1251"
    assert docs[0].metadata["warc_record_id"] == "<urn:uuid:c4c112a5-3503-4483-abf8-51a0dd86dd53>"
    # dolma's crawler writes WARC-Target-URI as <https://...>: the brackets go
    dolma, _ = read(shared_data(f"{WARC}/dolma-sample-0000.warc.gz"))
    assert dolma[0].url == "https://www.semanticscholar.org/research/research-team"


def test_gzip_content_encoding_is_undone():
    # warcio's example.com capture stores the body gzip-compressed (Content-Encoding: gzip)
    (doc,), _ = read(shared_data(f"{WARC}/warcio-example.warc.gz"))
    assert doc.html.lstrip().lower().startswith(b"<!doctype html>")
    assert b"Example Domain" in doc.html


def test_wet_conversion_record():
    (doc,), stats = read(shared_data(f"{WARC}/whirlwind-CC-MAIN-2024-22.warc.wet.gz"))
    assert stats.records == 1 and doc.html is None
    assert doc.url == "https://an.wikipedia.org/wiki/Escopete"
    assert doc.text.startswith("Escopete - Biquipedia, a enciclopedia libre\n")
    assert doc.metadata["cc_languages"] == "spa"  # CLD2 in the WET header; Aragonese is not among its languages


def test_jsonl_ccnet_documents():
    docs, stats = read(shared_data("webcrawl/wet_text/cc_en_head-0091.jsonl.gz"))
    assert (stats.records, stats.documents) == (10, 10)
    assert all(d.text and d.url.startswith("http") for d in docs)
    assert {"language_score", "perplexity"} <= set(docs[0].metadata)


def test_detect_format():
    assert [detect_format(n) for n in ("a.warc.gz", "a.warc.wet.gz", "a.jsonl.zst", "p.html.gz", "b.txt.xz")] == \
        ["warc", "wet", "jsonl", "html", "text"]
    with pytest.raises(ValueError, match="WAT files hold crawl metadata"):
        detect_format("x.warc.wat.gz")


# ---------------------------------------------------------------------------------------------------
# Broken input: counted skips


def test_truncated_warc_keeps_complete_records(tmp_path):
    data = shared_data(f"{WARC}/dolma-sample-0000.warc.gz").read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(data[: len(data) // 2])
    docs, stats = read(cut)
    # 14 records start before the cut; the 14th is cut short inside its body
    assert (stats.records, stats.documents, dict(stats.skipped)) == (14, 13, {"warc_truncated_record": 1})
    full, _ = read(shared_data(f"{WARC}/dolma-sample-0000.warc.gz"))
    assert [d.html for d in docs] == [d.html for d in full[:13]]


def test_binary_junk_and_empty_files(tmp_path):
    junk = tmp_path / "junk.warc.gz"
    junk.write_bytes(random.Random(0).randbytes(5000))
    assert read(junk)[1].to_dict() == {"files": 1, "records": 0, "documents": 0,
                                       "skipped": {"warc_unreadable_rest_of_file": 1}}
    for name in ("empty.warc.gz", "empty.jsonl.gz", "empty.txt"):
        (tmp_path / name).write_bytes(b"")
        docs, stats = read(tmp_path / name)
        assert docs == [] and dict(stats.skipped) == {"empty_file": 1}
    text = tmp_path / "binary.txt"
    text.write_bytes(random.Random(1).randbytes(3000))
    assert dict(read(text)[1].skipped) == {"text_not_utf8": 1}


def test_garbage_inside_a_warc_ends_the_file_with_one_skip(tmp_path):
    data = shared_data(f"{WARC}/dolma-sample-0000.warc.gz").read_bytes()
    broken = tmp_path / "broken.warc.gz"
    broken.write_bytes(data[:30000] + random.Random(2).randbytes(3000) + data[30000:])
    docs, stats = read(broken)
    assert len(docs) == 2 and dict(stats.skipped) == {"warc_unreadable_rest_of_file": 1}


def test_jsonl_bad_lines_and_truncated_gzip(tmp_path):
    lines = [json.dumps({"text": "one", "url": "u1"}), "{not json", json.dumps({"no_text": 1}),
             json.dumps({"text": "two", "metadata": {"a": 1}, "extra": 5})]
    path = tmp_path / "docs.jsonl.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    docs, stats = read(path)
    assert [(d.text, d.url) for d in docs] == [("one", "u1"), ("two", None)]
    assert docs[1].metadata == {"a": 1, "extra": 5, "source": "docs.jsonl.gz"}
    assert dict(stats.skipped) == {"jsonl_bad_line": 1, "jsonl_no_text": 1}

    real = shared_data("webcrawl/wet_text/cc_en_head-0091.jsonl.gz").read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(real[: len(real) // 2])
    docs, stats = read(cut)
    assert 0 < len(docs) < 10 and stats.skipped["unreadable_rest_of_file"] == 1


def test_jsonl_zstd(tmp_path):
    path = tmp_path / "docs.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "hello"}\n{"text": "world"}\n'))
    assert [d.text for d in read(path)[0]] == ["hello", "world"]


def test_text_separator(tmp_path):
    path = tmp_path / "shard.txt"
    path.write_text("first doc\nline 2\n<|endoftext|>\nsecond\n", encoding="utf-8")
    assert [d.text for d in read(path)[0]] == ["first doc\nline 2", "second\n"]


# ---------------------------------------------------------------------------------------------------
# HTTP bodies and our WARC writer


def test_http_parsing_chunked_and_deflate():
    import zlib

    status, headers, body = parse_http_response(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\n\r\nnope")
    assert (status, headers, body) == (404, {"content-type": "text/html"}, b"nope")
    assert parse_http_response(b"GET / HTTP/1.1\r\n\r\n") is None
    chunked = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
    assert decode_http_body(chunked, {"transfer-encoding": "chunked"}) == b"hello, world"
    assert decode_http_body(zlib.compress(b"deflated"), {"content-encoding": "deflate"}) == b"deflated"
    with pytest.raises(ValueError, match="cannot decode"):
        decode_http_body(b"\x1f\x8bnot gzip", {"content-encoding": "gzip"})


def test_write_warc_round_trip_with_fastwarc_digests(tmp_path):
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    pages = [("https://docs.python.org/3/a.html", "<html><body><p>Ünïcode</p></body></html>".encode()),
             ("https://docs.python.org/3/b.html", b"<html><body>B</body></html>")]
    path = tmp_path / "pages.warc.gz"
    assert write_warc(path, pages) == 2
    docs, stats = read(path)
    assert [(d.url, d.html) for d in docs] == pages and stats.documents == 2
    # fastwarc checks the WARC-Block-Digest (whole block) and WARC-Payload-Digest (HTTP body) we wrote
    for parse_http, verify in ((False, "verify_block_digest"), (True, "verify_payload_digest")):
        with open(path, "rb") as f:
            records = ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=parse_http)
            assert [getattr(r, verify)(consume=False) for r in records] == [True, True]
    raw = path.read_bytes()
    assert raw.count(b"\x1f\x8b\x08") == 2  # one gzip member per record, as Common Crawl writes them
