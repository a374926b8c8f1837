"""Readers: documents out of WARC (HTTP responses), WET (extracted text), JSONL, HTML and plain-text files.

Every reader is a generator `read_<format>(path, stats)` of `Document`s; what it cannot read becomes a
counted skip in `stats.skipped` (reason -> count), never an exception: crawl data is dirty at scale, and one
truncated file must not stop a run over a million. Document ids are `<file name>#<n>`, n counting the
records (WARC) or lines (JSONL) of the file, so they are stable across runs and unique when input names are.

Compression is recognised by magic bytes, not by name: gzip (also multi-member, as WARC files are written:
one gzip member per record), zstandard, xz, or none. WARC parsing is `fastwarc`'s (a C++ parser, ~1 GB/s).
`write_warc` packs HTML pages into a WARC file of gzip-per-record response records, so that pages from
anywhere (a documentation tree, a benchmark) go through the same reader as crawl data.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import lzma
import os
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

import zstandard

from scratchlm.atomic import atomic_path
from scratchlm.data.document import Document

FORMATS = ("warc", "wet", "jsonl", "html", "text")
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ\x00": "xz"}
# what a broken compressed stream raises
_STREAM_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError)


@dataclass
class ReadStats:
    """What the readers met: files opened, records seen (WARC records, JSONL lines, files), documents
    yielded, and skips by reason."""

    files: int = 0
    records: int = 0
    documents: int = 0
    skipped: Counter = field(default_factory=Counter)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] += n

    def merge(self, other: ReadStats) -> ReadStats:
        self.files += other.files
        self.records += other.records
        self.documents += other.documents
        self.skipped.update(other.skipped)
        return self

    def to_dict(self) -> dict:
        return {"files": self.files, "records": self.records, "documents": self.documents,
                "skipped": dict(sorted(self.skipped.items()))}


def detect_format(path: str | os.PathLike) -> str:
    """The reader for a file name: *.warc.wet[.gz] -> wet, *.warc[.gz] -> warc, *.jsonl[.gz|.zst] -> jsonl,
    *.htm[l][.gz] -> html, anything else -> text."""
    name = Path(path).name.lower()
    for ext in (".gz", ".zst", ".xz"):
        name = name.removesuffix(ext)
    if name.endswith(".wat"):
        raise ValueError(f"{path}: WAT files hold crawl metadata, not documents; read the WARC or WET file instead")
    if name.endswith(".wet") or name.endswith(".warc.wet"):
        return "wet"
    if name.endswith(".warc"):
        return "warc"
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if name.endswith((".html", ".htm")):
        return "html"
    return "text"


def open_decompressed(path: str | os.PathLike) -> IO[bytes]:
    """The file's bytes, decompressed by what its first bytes say it is (gzip, zstd, xz, or plain)."""
    f = open(path, "rb")
    head = f.read(6)
    f.seek(0)
    kind = next((k for magic, k in _MAGIC.items() if head.startswith(magic)), None)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=f)
    if kind == "xz":
        return lzma.LZMAFile(f)
    if kind == "zstd":
        # BufferedReader: zstandard's reader has no readline, so it could not be iterated by line
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True, closefd=True))
    return f


def read_documents(path: str | os.PathLike, fmt: str, stats: ReadStats) -> Iterator[Document]:
    """Documents of one file with the reader for `fmt` (one of FORMATS, or "auto": by file name)."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise ValueError(f"unknown input format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    stats.files += 1
    path = Path(path)
    if path.stat().st_size == 0:
        stats.skip("empty_file")
        return
    yield from READERS[fmt](path, stats)


# ---------------------------------------------------------------------------------------------------
# WARC and WET


def _target_uri(record) -> str | None:
    uri = record.headers.get("WARC-Target-URI")
    return uri.strip("<>") if uri else None  # some crawlers write <https://...> (seen in real files)


def _warc_blocks(path: Path, stats: ReadStats, record_type: str) -> Iterator[tuple[int, object, bytes]]:
    """(ordinal, record, block bytes) of the file's complete records of one type. A record whose block is
    shorter than its Content-Length (a cut file) is a skip; a stream error (bad gzip, garbage where a header
    should be) ends the file with one skip: fastwarc cannot resynchronise after it."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    wanted = {"response": WarcRecordType.response, "conversion": WarcRecordType.conversion}[record_type]
    n = 0
    try:
        with open(path, "rb") as f:
            for record in ArchiveIterator(f, record_types=wanted, parse_http=False):
                n += 1
                stats.records += 1
                block = record.reader.read()
                if len(block) < record.content_length:
                    stats.skip("warc_truncated_record")
                    continue
                yield n, record, block
    except _STREAM_ERRORS:
        stats.skip("warc_unreadable_rest_of_file")


def parse_http_response(block: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """(status code, headers with lowercase names, body) of an HTTP/1.x response, or None if it is not one."""
    head, sep, body = block.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/") or not status[1].isdigit():
        return None
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return int(status[1]), headers, body


def _dechunk(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body ("<hex size>\\r\\n<data>\\r\\n"... "0\\r\\n\\r\\n")."""
    out, pos = bytearray(), 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += body[end + 2 : end + 2 + size]
        pos = end + 4 + size


def decode_http_body(body: bytes, headers: dict[str, str]) -> bytes:
    """The body as the server meant it: chunked transfer encoding undone, gzip/deflate content encoding
    decompressed (crawlers store what came over the wire). Raises ValueError for what it cannot undo."""
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = _dechunk(body)
        encoding = headers.get("content-encoding", "identity").lower().strip()
        if encoding in ("gzip", "x-gzip"):  # some crawlers store the decoded body but keep the header
            return gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
        if encoding == "deflate":  # zlib-wrapped as the RFC says, or raw deflate as some servers send
            return zlib.decompress(body) if body[:1] == b"\x78" else zlib.decompress(body, -zlib.MAX_WBITS)
        if encoding not in ("identity", ""):
            raise ValueError(f"unsupported content encoding {encoding!r}")
        return body
    except (*_STREAM_ERRORS, ValueError) as e:
        raise ValueError(f"cannot decode the HTTP body: {e}") from None


def content_type_and_charset(header: str) -> tuple[str, str | None]:
    """"text/html; charset=UTF-8" -> ("text/html", "utf-8")."""
    mime, *params = (part.strip() for part in header.split(";"))
    charset = next((p.split("=", 1)[1].strip("\"' ").lower() for p in params if p.lower().startswith("charset=")), None)
    return mime.lower(), charset or None


def read_warc(path: Path, stats: ReadStats) -> Iterator[Document]:
    """HTML (and plain-text) HTTP responses with status 2xx: `html` = the body bytes, text empty until
    extraction. Other content types (images, PDFs, ...) and other statuses are counted skips."""
    for n, record, block in _warc_blocks(path, stats, "response"):
        response = parse_http_response(block)
        if response is None:
            stats.skip("warc_not_http")
            continue
        status, headers, body = response
        mime, charset = content_type_and_charset(headers.get("content-type", ""))
        if not 200 <= status < 300:
            stats.skip("warc_http_status")
        elif mime not in ("text/html", "application/xhtml+xml", "text/plain", ""):
            stats.skip("warc_not_html")
        else:
            try:
                body = decode_http_body(body, headers)
            except ValueError:
                stats.skip("warc_bad_http_encoding")
                continue
            if not body.strip():
                stats.skip("warc_empty_body")
                continue
            stats.documents += 1
            yield Document(id=f"{path.name}#{n}", text="", url=_target_uri(record), html=body, metadata={
                "source": path.name, "content_type": mime or None, "charset": charset,
                "warc_record_id": record.record_id, "warc_date": record.headers.get("WARC-Date")})


def read_wet(path: Path, stats: ReadStats) -> Iterator[Document]:
    """The extracted text of every WET conversion record (UTF-8, as Common Crawl writes it)."""
    for n, record, block in _warc_blocks(path, stats, "conversion"):
        text = block.decode("utf-8", errors="replace").strip()
        if not text:
            stats.skip("wet_empty")
            continue
        stats.documents += 1
        language = record.headers.get("WARC-Identified-Content-Language")
        yield Document(id=f"{path.name}#{n}", text=text, url=_target_uri(record), metadata={
            "source": path.name, "warc_record_id": record.record_id, "cc_languages": language})


# ---------------------------------------------------------------------------------------------------
# JSONL, HTML and plain text


def _lines(path: Path, stats: ReadStats) -> Iterator[bytes]:
    """The file's lines, decompressed; a broken stream (truncated gzip, ...) ends the file with one skip."""
    try:
        with open_decompressed(path) as f:
            yield from f
    except _STREAM_ERRORS:
        stats.skip("unreadable_rest_of_file")


def read_jsonl(path: Path, stats: ReadStats, text_key: str = "text") -> Iterator[Document]:
    """One document per JSON line with a string field `text`; "url" (at the top or inside "metadata") becomes the
    url, the "metadata" object and the other fields become metadata. Lines that are not such objects are skips (a truncated last line included)."""
    for n, line in enumerate(_lines(path, stats), 1):
        if not line.strip():
            continue
        stats.records += 1
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            stats.skip("jsonl_bad_line")
            continue
        if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
            stats.skip("jsonl_no_text")
            continue
        text = record.pop(text_key)
        metadata = record.pop("metadata", None)
        metadata = {**(metadata if isinstance(metadata, dict) else {}), **record, "source": path.name}
        url = metadata.pop("url", None)  # top level (ours) or inside metadata (Dolma / CCNet)
        stats.documents += 1
        yield Document(id=f"{path.name}#{n}", text=text, url=url if isinstance(url, str) else None, metadata=metadata)


def _read_all(path: Path, stats: ReadStats) -> bytes | None:
    try:
        with open_decompressed(path) as f:
            return f.read()
    except _STREAM_ERRORS:
        stats.skip("unreadable_file")
        return None


def read_html(path: Path, stats: ReadStats) -> Iterator[Document]:
    """A saved page (.html, .html.gz) as one undecoded document, like a WARC response."""
    stats.records += 1
    data = _read_all(path, stats)
    if data is None:
        return
    if not data.strip():
        stats.skip("empty_file")
        return
    stats.documents += 1
    yield Document(id=f"{path.name}#1", text="", html=data, metadata={"source": path.name, "content_type": "text/html"})


def read_text(path: Path, stats: ReadStats, separator: str = "<|endoftext|>") -> Iterator[Document]:
    """UTF-8 text, one document per block between lines equal to `separator` (the pretrain/ shard format);
    a file without separator lines is one document. Text that is not UTF-8 is a skip (binary junk)."""
    data = _read_all(path, stats)
    if data is None:
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        stats.records += 1
        stats.skip("text_not_utf8")
        return
    for n, block in enumerate(text.split(f"\n{separator}\n"), 1):
        stats.records += 1
        if not block.strip():
            stats.skip("text_empty")
            continue
        stats.documents += 1
        yield Document(id=f"{path.name}#{n}", text=block, metadata={"source": path.name})


READERS: dict[str, Callable[[Path, ReadStats], Iterator[Document]]] = {
    "warc": read_warc, "wet": read_wet, "jsonl": read_jsonl, "html": read_html, "text": read_text}


# ---------------------------------------------------------------------------------------------------
# Writing WARC


def _warc_record(url: str, html: bytes, date: str) -> bytes:
    """A WARC/1.1 response record (headers and block) holding an HTTP 200 text/html response."""
    http = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
            + f"Content-Length: {len(html)}\r\n\r\n".encode("ascii") + html)
    digest = "sha1:" + base64.b32encode(hashlib.sha1(http).digest()).decode("ascii")
    payload = "sha1:" + base64.b32encode(hashlib.sha1(html).digest()).decode("ascii")
    headers = (f"WARC/1.1\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>\r\n"
               f"WARC-Date: {date}\r\nWARC-Target-URI: {url}\r\nWARC-Block-Digest: {digest}\r\n"
               f"WARC-Payload-Digest: {payload}\r\nContent-Type: application/http; msgtype=response\r\n"
               f"Content-Length: {len(http)}\r\n\r\n")
    return headers.encode("utf-8") + http + b"\r\n\r\n"


def write_warc(path: str | os.PathLike, pages: Iterable[tuple[str, bytes]], date: datetime | None = None) -> int:
    """Write (url, html bytes) pages as WARC response records, one gzip member each (as Common Crawl does,
    so a reader can seek to any record), atomically; returns the number of records. Record ids are derived
    from the URL and the date is fixed per call, so the same pages give the same file."""
    stamp = (date or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    n = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for url, html in pages:
            f.write(gzip.compress(_warc_record(url, html, stamp), mtime=0))
            n += 1
    return n
