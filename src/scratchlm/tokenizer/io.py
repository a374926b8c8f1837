"""Tokenizer files: GPT-2 vocab.json/merges.txt, our checksummed format, and HF tokenizer.json export.

Token bytes are written in GPT-2's byte-level alphabet (every byte as one printable character), which
keeps files readable and lossless; special tokens are stored separately so they cannot be confused
with ordinary tokens that print the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from scratchlm.atomic import atomic_write

FORMAT, VERSION = "scratchlm.bpe", 1
FILENAME = "scratchlm_tokenizer.json"
# Upgrades from older format versions: version -> function(dict) -> dict of the next version.
_UPGRADES: dict = {}


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (openai/gpt-2 encoder.py).

    Printable latin-1 bytes map to themselves; the 68 others (controls, space, ...) to chr(256 + n)
    in byte order, so that BPE vocab files never contain whitespace or control characters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def to_printable(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def from_printable(text: str) -> bytes:
    """Inverse of to_printable; strings outside the byte-level alphabet (added tokens) are UTF-8."""
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in text)
    except KeyError:
        return text.encode("utf-8")


# ---------------------------------------------------------------------------------------------
# GPT-2 format


def load_gpt2_files(vocab_path: str | os.PathLike, merges_path: str | os.PathLike) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """GPT-2 `vocab.json` (token -> id) and `merges.txt` ("left right" per line) -> (vocab, merges)."""
    raw = _read_json(vocab_path)
    if not isinstance(raw, dict):
        raise ValueError(f"{vocab_path}: expected a JSON object mapping tokens to ids")
    vocab: dict[int, bytes] = {}
    for token, i in raw.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise ValueError(f"{vocab_path}: token {token!r} has id {i!r}, expected a non-negative integer")
        if i in vocab:
            raise ValueError(f"{vocab_path}: id {i} is used twice")
        vocab[i] = from_printable(token)
    known = set(vocab.values())
    merges = []
    for lineno, line in enumerate(_read_text(merges_path).splitlines(), 1):
        if not line.strip() or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{merges_path}:{lineno}: expected two tokens separated by one space, got {line!r}")
        left, right = map(from_printable, parts)
        for tok in (left, right, left + right):
            if tok not in known:
                raise ValueError(f"{merges_path}:{lineno}: token {to_printable(tok)!r} is not in {Path(vocab_path).name}")
        merges.append((left, right))
    return vocab, merges


def save_gpt2_files(directory: str | os.PathLike, vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]]) -> None:
    directory = Path(directory)
    with atomic_write(directory / "vocab.json") as f:
        json.dump({to_printable(b): i for i, b in sorted(vocab.items())}, f, ensure_ascii=False, indent=0)
    with atomic_write(directory / "merges.txt") as f:
        f.write("#version: 0.2\n" + "".join(f"{to_printable(a)} {to_printable(b)}\n" for a, b in merges))


# ---------------------------------------------------------------------------------------------
# our format


def _canonical(vocab, merges, special_tokens, pattern) -> dict:
    ids = {s: next(i for i, b in sorted(vocab.items()) if b == s.encode("utf-8")) for s in special_tokens}
    return {
        "format": FORMAT,
        "version": VERSION,
        "pattern": pattern,
        "special_tokens": ids,
        "vocab": {str(i): to_printable(b) for i, b in sorted(vocab.items())},
        "merges": [f"{to_printable(a)} {to_printable(b)}" for a, b in merges],
    }


def _checksum(content: dict) -> str:
    body = {k: v for k, v in content.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def tokenizer_hash(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens: list[str], pattern: str) -> str:
    """sha256 of the tokenizer's canonical content: equal tokenizers hash equal whatever the dict order."""
    return _checksum(_canonical(vocab, merges, special_tokens, pattern))


def save_tokenizer(directory, vocab, merges, special_tokens, pattern) -> Path:
    """Write `directory/scratchlm_tokenizer.json` atomically, with a checksum of its content."""
    content = _canonical(vocab, merges, special_tokens, pattern)
    content["sha256"] = _checksum(content)
    path = Path(directory) / FILENAME
    with atomic_write(path) as f:
        json.dump(content, f, ensure_ascii=False, indent=1)
    return path


def load_tokenizer(directory: str | os.PathLike) -> dict:
    """Read our format -> dict(vocab, merges, special_tokens, pattern) for Tokenizer(**...)."""
    path = Path(directory) / FILENAME if Path(directory).is_dir() else Path(directory)
    content = _read_json(path)
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ValueError(f"{path}: not a scratchlm tokenizer file (format {content.get('format') if isinstance(content, dict) else None!r})")
    while content.get("version") in _UPGRADES:
        content = _UPGRADES[content["version"]](content)
    if content.get("version") != VERSION:
        raise ValueError(f"{path}: format version {content.get('version')!r} is not supported (this scratchlm reads version {VERSION})")
    if content.get("sha256") != _checksum(content):
        raise ValueError(f"{path}: checksum mismatch, the file is corrupted or was edited by hand")
    vocab = {int(i): from_printable(t) for i, t in content["vocab"].items()}
    for s, i in content["special_tokens"].items():
        vocab[i] = s.encode("utf-8")
    merges = [tuple(map(from_printable, m.split(" "))) for m in content["merges"]]
    return {"vocab": vocab, "merges": merges, "special_tokens": list(content["special_tokens"]), "pattern": content["pattern"]}


# ---------------------------------------------------------------------------------------------
# Hugging Face export


def export_hf_tokenizer_json(path, vocab, merges, special_tokens, pattern) -> None:
    """A `tokenizers` tokenizer.json: split by our regex, byte-level alphabet, BPE with our merges."""
    specials = {s.encode("utf-8"): s for s in special_tokens}
    added = [
        {"id": i, "content": specials[b], "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, b in sorted(vocab.items())
        if b in specials
    ]
    content = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {to_printable(b) if b not in specials else specials[b]: i for i, b in sorted(vocab.items())},
            "merges": [f"{to_printable(a)} {to_printable(b)}" for a, b in merges],
        },
    }
    with atomic_write(path) as f:
        json.dump(content, f, ensure_ascii=False, indent=1)


def _read_text(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _read_json(path: str | os.PathLike):
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
