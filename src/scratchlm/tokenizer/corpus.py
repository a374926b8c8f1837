"""Reading text corpora for tokenizer training and encoding: plain or compressed files, split into
byte ranges that workers can process independently and exactly.

A plain file is split into ranges whose edges are safe cut points (see pretokenize.Splitter), found
by reading a small window of raw bytes around each target offset. Compressed files cannot be seeked,
so each is one range read by one worker; shard large corpora (or decompress them) for parallelism.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scratchlm.tokenizer.pretokenize import Splitter

_OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".lzma": lzma.open, ".bz2": bz2.open}
BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class ByteRange:
    """Bytes [start, end) of `path`; end = -1 means to the end (the only option for compressed files)."""

    path: str
    start: int = 0
    end: int = -1


def is_compressed(path: str | os.PathLike) -> bool:
    return Path(path).suffix in _OPENERS


def check_inputs(paths: list[str | os.PathLike]) -> list[Path]:
    """Resolve input paths, failing early and clearly on missing, unreadable or empty inputs."""
    if not paths:
        raise ValueError("no input files given")
    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"input file not found: {p}")
        if not p.is_file():
            raise ValueError(f"input is not a regular file: {p}")
        if not os.access(p, os.R_OK):
            raise PermissionError(f"input file is not readable: {p}")
        out.append(p)
    if all(p.stat().st_size == 0 for p in out):
        raise ValueError(f"empty corpus: all {len(out)} input file(s) are empty")
    return out


def plan_ranges(paths: list[Path], splitter: Splitter, target_bytes: int) -> list[ByteRange]:
    """Cut every plain file into ranges of about target_bytes at safe boundaries; compressed files whole."""
    ranges = []
    for path in paths:
        size = path.stat().st_size
        if is_compressed(path) or size <= target_bytes:
            ranges.append(ByteRange(str(path)))
            continue
        edges = [0]
        with open(path, "rb") as f:
            for target in range(target_bytes, size, target_bytes):
                edge = _boundary_before(f, target, splitter)
                if edge > edges[-1]:
                    edges.append(edge)
        edges.append(size)
        ranges.extend(ByteRange(str(path), a, b) for a, b in zip(edges, edges[1:]))
    return ranges


def _boundary_before(f, target: int, splitter: Splitter, window: int = 1 << 16) -> int:
    """The last safe byte boundary at or before about `target` (0 if there is none)."""
    while True:
        start = max(0, target - window)
        f.seek(start)
        # latin-1 maps bytes 1:1 to chars, so positions are byte offsets; BYTE_BOUNDARY is ASCII-only.
        cut = splitter.safe_cut(f.read(target - start).decode("latin-1"))
        if cut > 0 or start == 0:
            return start + cut if cut > 0 else 0
        window *= 4


def iter_blocks(rng: ByteRange, block_bytes: int = BLOCK_BYTES) -> Iterator[str]:
    """Decoded text of a range, in blocks; invalid UTF-8 raises a ValueError naming the file and offset."""
    opener = _OPENERS.get(Path(rng.path).suffix, open)
    decoder = codecs.getincrementaldecoder("utf-8")()
    with opener(rng.path, "rb") as f:
        if rng.start:
            f.seek(rng.start)
        remaining = (rng.end - rng.start) if rng.end >= 0 else None
        offset = rng.start
        while remaining is None or remaining > 0:
            data = f.read(block_bytes if remaining is None else min(block_bytes, remaining))
            if not data:
                break
            try:
                text = decoder.decode(data)
            except UnicodeDecodeError as e:
                raise ValueError(f"{rng.path}: invalid UTF-8 near byte {offset + e.start}: {e.reason}") from None
            offset += len(data)
            if remaining is not None:
                remaining -= len(data)
            if text:
                yield text
        try:
            tail = decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            raise ValueError(f"{rng.path}: truncated UTF-8 sequence at the end of byte {offset}: {e.reason}") from None
        if tail:
            yield tail


def range_bytes(rng: ByteRange) -> int:
    """Size of a range in bytes on disk (compressed size for compressed files): for progress bars."""
    return (rng.end - rng.start) if rng.end >= 0 else Path(rng.path).stat().st_size
