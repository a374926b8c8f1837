"""Token files, the training-data format: a flat array of token ids (numpy uint16 or uint32) that
training memory-maps, plus a JSON sidecar (`<file>.json`) with dtype, count and the tokenizer hash.

Encoding is parallel: inputs are cut into byte ranges at safe boundaries (corpus.plan_ranges), workers
encode ranges, and the parent writes results in input order, so the file equals the serial encoding.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from itertools import chain
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from scratchlm.atomic import atomic_path, write_text_atomic
from scratchlm.tokenizer.bpe import Tokenizer
from scratchlm.tokenizer.corpus import ByteRange, check_inputs, iter_blocks, plan_ranges, range_bytes
from scratchlm.tokenizer.pretokenize import Splitter

FORMAT, VERSION = "scratchlm.tokens", 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(f"{path}.json")


def encode_files(
    tokenizer: Tokenizer,
    inputs: list[str | os.PathLike],
    out_path: str | os.PathLike,
    num_workers: int = 0,
    range_mb: int = 4,
    progress: bool = True,
) -> dict:
    """Encode text files (concatenated in order) into a token file; returns the sidecar metadata."""
    paths = check_inputs(inputs)
    dtype = token_dtype(tokenizer.vocab_size)
    ranges = plan_ranges(paths, Splitter(tokenizer.pattern, tokenizer.special_tokens, on_bytes=True), range_mb << 20)
    n_procs = min(num_workers or os.cpu_count() or 1, len(ranges))
    bar = tqdm(total=sum(map(range_bytes, ranges)), unit="B", unit_scale=True, desc="encode", disable=not progress)
    count = 0
    text_bytes: dict[str, int] = dict.fromkeys(map(str, paths), 0)
    pool = None
    try:
        if n_procs <= 1:
            _init_worker(tokenizer, dtype)
            results = map(_encode_range, ranges)
        else:
            pool = mp.get_context("spawn").Pool(n_procs, initializer=_init_worker, initargs=(tokenizer, dtype))
            results = pool.imap(_encode_range, ranges)  # ordered: the file follows input order
        with atomic_path(out_path) as tmp, open(tmp, "wb") as f:
            for rng, (ids, n_bytes) in zip(ranges, results):
                ids.tofile(f)
                count += len(ids)
                text_bytes[rng.path] += n_bytes
                bar.update(range_bytes(rng))
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    sources = [{"path": str(p), "file_bytes": p.stat().st_size, "text_bytes": text_bytes[str(p)]} for p in paths]
    return write_sidecar(out_path, count=count, vocab_size=tokenizer.vocab_size, tokenizer_sha256=tokenizer.hash,
                         special_tokens=tokenizer.special_ids, text_bytes=sum(text_bytes.values()), sources=sources)


def write_sidecar(path: str | os.PathLike, *, count: int, vocab_size: int, tokenizer_sha256: str,
                  special_tokens: dict[str, int], text_bytes: int, sources: list[dict] | None = None) -> dict:
    """Write the JSON sidecar of the token file at `path` (written already); returns its contents."""
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": token_dtype(vocab_size).name,
        "count": count,
        "vocab_size": vocab_size,
        "tokenizer_sha256": tokenizer_sha256,
        "special_tokens": special_tokens,
        "text_bytes": text_bytes,  # UTF-8 bytes of text, uncompressed
        "sources": sources or [],
    }
    write_text_atomic(sidecar_path(path), json.dumps(meta, indent=2) + "\n")
    return meta


def write_token_file(path: str | os.PathLike, ids: np.ndarray, *, vocab_size: int, tokenizer_sha256: str,
                     text_bytes: int, special_tokens: dict[str, int] | None = None) -> dict:
    """A token file from ids already in memory (other pipelines, tests); returns the sidecar contents."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got [{ids.min()}, {ids.max()}]")
    with atomic_path(path) as tmp:
        ids.astype(token_dtype(vocab_size)).tofile(tmp)
    return write_sidecar(path, count=int(ids.size), vocab_size=vocab_size, tokenizer_sha256=tokenizer_sha256,
                         special_tokens=special_tokens or {}, text_bytes=text_bytes)


_WORKER: dict = {}


def _init_worker(tokenizer: Tokenizer, dtype: np.dtype) -> None:
    _WORKER["tokenizer"], _WORKER["dtype"] = tokenizer, dtype


def _encode_range(rng: ByteRange) -> tuple[np.ndarray, int]:
    """Token ids of a range, and its text size in UTF-8 bytes."""
    tok: Tokenizer = _WORKER["tokenizer"]
    n_bytes = 0

    def blocks():
        nonlocal n_bytes
        for block in iter_blocks(rng):
            n_bytes += len(block.encode("utf-8"))
            yield block

    ids = list(chain.from_iterable(tok.encode_chunks(blocks(), min_chars=1 << 20)))
    return np.array(ids, dtype=_WORKER["dtype"]), n_bytes


def read_tokens(path: str | os.PathLike, tokenizer_sha256: str | None = None) -> np.memmap:
    """Memory-map a token file after checking it against its sidecar (and optionally the tokenizer)."""
    path = Path(path)
    meta = read_sidecar(path)
    dtype = np.dtype(meta["dtype"])
    expected = meta["count"] * dtype.itemsize
    if path.stat().st_size != expected:
        raise ValueError(f"{path}: {path.stat().st_size} bytes on disk but the sidecar says {meta['count']} {dtype.name} tokens ({expected} bytes); the file is truncated or corrupted")
    if tokenizer_sha256 is not None and meta["tokenizer_sha256"] != tokenizer_sha256:
        raise ValueError(f"{path} was encoded with tokenizer {meta['tokenizer_sha256'][:12]}, not {tokenizer_sha256[:12]}")
    if meta["count"] == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def read_sidecar(path: str | os.PathLike) -> dict:
    side = sidecar_path(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"token file not found: {path}")
    if not side.exists():
        raise FileNotFoundError(f"{path} has no sidecar {side.name}: was it written by `scratchlm tokenizer encode`?")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{side}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{side}: expected format {FORMAT} v{VERSION}, got {meta.get('format')} v{meta.get('version')}")
    return meta


def token_stats(tokenizer: Tokenizer, ids: np.ndarray | list[int], n_bytes: int, top: int = 10) -> dict:
    """Compression and vocabulary usage of an encoded text of n_bytes UTF-8 bytes."""
    ids = np.asarray(ids)
    counts = np.bincount(ids, minlength=tokenizer.vocab_size) if len(ids) else np.zeros(tokenizer.vocab_size, dtype=np.int64)
    used = int((counts > 0).sum())
    order = np.argsort(-counts, kind="stable")[:top]
    return {
        "bytes": n_bytes,
        "tokens": int(len(ids)),
        "bytes_per_token": n_bytes / max(len(ids), 1),
        "vocab_size": tokenizer.vocab_size,
        "vocab_used": used,
        "vocab_used_fraction": used / tokenizer.vocab_size,
        "top_tokens": [
            {"id": int(i), "token": tokenizer.decode_bytes([int(i)]).decode("utf-8", "replace"), "count": int(counts[i])}
            for i in order if counts[i] > 0
        ],
    }

