"""Tokenizer files: GPT-2 vocab.json/merges.txt, our checksummed format, and HF tokenizer.json export.

Every format writes token bytes in GPT-2's byte-level alphabet (each byte as one printable character):
files stay readable, never contain whitespace or control characters inside a token, and map back to
the exact bytes. The data model is plain values:
  vocab: dict[int, bytes]                 token id -> bytes (special tokens included, as their UTF-8)
  merges: list[tuple[bytes, bytes]]       in rank order
  special_tokens: list[str]               each is the vocab entry whose bytes are its UTF-8
  pattern: str                            the pre-tokenization regex itself
Outputs are written atomically; readers raise errors that name the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import regex

from scratchlm.atomic import atomic_write

FORMAT, VERSION = "scratchlm.bpe", 1
FILENAME = "scratchlm_tokenizer.json"
# Upgrades of our format: old version -> function(content dict) -> content of version old + 1, checksum
# untouched (it covers the tokenizer, not the layout). Applied in order by load_tokenizer; none yet.
_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


class TokenizerFileNotFoundError(FileNotFoundError, ValueError):
    """A missing tokenizer file: a FileNotFoundError, and a ValueError for callers that treat every
    unusable tokenizer file alike."""


# ---------------------------------------------------------------------------------------------
# 1) the byte-level alphabet


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (openai/gpt-2 encoder.py).

    Printable latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ': 188 of them) map to themselves; the other
    68 (controls, space, DEL, NBSP, soft hyphen) to chr(256 + n) in byte order, so space is 'Ġ'.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in table)
    table.update({b: chr(256 + n) for n, b in enumerate(shifted)})
    return dict(sorted(table.items()))


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def to_printable(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def from_printable(text: str) -> bytes:
    """Inverse of to_printable; ValueError for a character outside the byte-level alphabet."""
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in text)
    except KeyError as e:
        raise ValueError(f"{text!r}: character {e.args[0]!r} is not in the byte-level alphabet") from None


def _gpt2_key_bytes(key: str) -> bytes:
    # vocab.json files also hold added tokens written as plain text ("<|im_start|>"); those that use a
    # character outside the alphabet cannot be byte-level strings, so they are taken as UTF-8. (An added
    # token made only of alphabet characters is ambiguous in this format and read as byte-level.)
    try:
        return from_printable(key)
    except ValueError:
        return key.encode("utf-8")


# ---------------------------------------------------------------------------------------------
# 2) GPT-2 format: vocab.json (token -> id) and merges.txt ("left right" per line)


def load_gpt2_files(
    vocab_path: str | os.PathLike, merges_path: str | os.PathLike
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """GPT-2 `vocab.json` and `merges.txt` -> (vocab, merges), checked to be consistent."""
    vocab = _read_gpt2_vocab(Path(vocab_path))
    known = set(vocab.values())
    merges = []
    for lineno, line in enumerate(_read_text(merges_path).split("\n"), 1):
        line = line.removesuffix("\r")
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{merges_path}:{lineno}: expected two tokens separated by one space, got {line!r}")
        try:
            left, right = map(from_printable, parts)
        except ValueError as e:
            raise ValueError(f"{merges_path}:{lineno}: {e}") from None
        for what, tok in (("token", left), ("token", right), ("merged token", left + right)):
            if tok not in known:
                raise ValueError(f"{merges_path}:{lineno}: {what} {to_printable(tok)!r} is not in {vocab_path}")
        merges.append((left, right))
    return vocab, merges


def _read_gpt2_vocab(path: Path) -> dict[int, bytes]:
    raw = _read_json(path, object_pairs_hook=tuple)  # (key, value) pairs keep duplicate keys, to report them
    if not isinstance(raw, tuple):  # a JSON array would be a list
        raise ValueError(f"{path}: expected a JSON object mapping tokens to ids")
    vocab: dict[int, bytes] = {}
    owner: dict[bytes, str] = {}
    for token, i in raw:
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise ValueError(f"{path}: token {token!r} has id {i!r}, expected a non-negative integer")
        if i in vocab:
            raise ValueError(f"{path}: id {i} is used twice (tokens {to_printable(vocab[i])!r} and {token!r})")
        b = _gpt2_key_bytes(token)
        if b in owner:
            raise ValueError(f"{path}: tokens {owner[b]!r} and {token!r} both stand for the bytes {b!r}")
        vocab[i], owner[b] = b, token
    return vocab


def save_gpt2_files(
    directory: str | os.PathLike, vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]]
) -> tuple[Path, Path]:
    """Write `directory/vocab.json` and `directory/merges.txt` (GPT-2 layout), each atomically."""
    if len(set(vocab.values())) != len(vocab):
        raise ValueError("vocab has two ids with the same bytes, which vocab.json (keyed by token) cannot hold")
    _check_merges(merges, set(vocab.values()), "save_gpt2_files")
    # Rendered before any file is opened, so a bad token cannot leave vocab.json without its merges.txt.
    keys = {to_printable(b): i for i, b in sorted(vocab.items())}
    lines = "".join(f"{to_printable(a)} {to_printable(b)}\n" for a, b in merges)
    directory = Path(directory)
    with atomic_write(directory / "vocab.json") as f:
        json.dump(keys, f, ensure_ascii=False)
    with atomic_write(directory / "merges.txt") as f:
        f.write("#version: 0.2\n" + lines)
    return directory / "vocab.json", directory / "merges.txt"


# ---------------------------------------------------------------------------------------------
# 3) our format: one checksummed JSON file, readable (byte-level strings) and lossless


def _definition(
    vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens: list[str], pattern: str
) -> dict[str, Any]:
    """The tokenizer as JSON values: what the checksum and tokenizer_hash cover."""
    return {
        "pattern": pattern,
        "special_tokens": {s: _special_id(vocab, s) for s in special_tokens},
        "vocab": {str(i): to_printable(b) for i, b in sorted(vocab.items())},
        "merges": [f"{to_printable(a)} {to_printable(b)}" for a, b in merges],
    }


def _special_id(vocab: dict[int, bytes], special: str) -> int:
    b = special.encode("utf-8")
    ids = [i for i, t in vocab.items() if t == b]
    if not ids:
        raise ValueError(f"special token {special!r} is not in the vocab (its UTF-8 bytes must be a token)")
    return min(ids)  # the id the encoder uses when several tokens share these bytes


def _sha256(definition: dict[str, Any]) -> str:
    # Canonical JSON: sorted keys and fixed separators, so the hash does not depend on dict order.
    # The hash identifies the tokenizer, not the file layout: a future format version must keep it.
    text = json.dumps(definition, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenizer_hash(
    vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens: list[str], pattern: str
) -> str:
    """sha256 (hex) of the tokenizer: equal tokenizers hash equal whatever the order of their dicts.

    It is also the checksum in our file format, so a file's "sha256" is the hash of what it holds.
    """
    return _sha256(_definition(vocab, merges, special_tokens, pattern))


def save_tokenizer(
    directory: str | os.PathLike,
    vocab: dict[int, bytes],
    merges: list[tuple[bytes, bytes]],
    special_tokens: list[str],
    pattern: str,
) -> Path:
    """Write `directory/scratchlm_tokenizer.json` atomically; it is checked first so that load accepts it."""
    _check_definition(vocab, merges, special_tokens, pattern, "save_tokenizer")
    definition = _definition(vocab, merges, special_tokens, pattern)
    content = {"format": FORMAT, "version": VERSION, **definition, "sha256": _sha256(definition)}
    path = Path(directory) / FILENAME
    with atomic_write(path) as f:
        json.dump(content, f, ensure_ascii=False, indent=1)
    return path


def load_tokenizer(path: str | os.PathLike) -> dict[str, Any]:
    """Read our format (a folder holding scratchlm_tokenizer.json, or the file itself).

    Returns {"vocab", "merges", "special_tokens", "pattern"}, ready for Tokenizer(**...). Older format
    versions are upgraded through _UPGRADES; anything unusable raises a ValueError naming the file.
    """
    path = Path(path)
    path = path / FILENAME if path.is_dir() or not path.suffix else path
    content = _upgrade(_read_json(path), path)
    fields = {"pattern": str, "special_tokens": dict, "vocab": dict, "merges": list, "sha256": str}
    for key, kind in fields.items():
        if not isinstance(content.get(key), kind):
            raise ValueError(f"{path}: field {key!r} is missing or not a JSON {kind.__name__}")
    definition = {k: content[k] for k in ("pattern", "special_tokens", "vocab", "merges")}
    if _sha256(definition) != content["sha256"]:
        raise ValueError(f"{path}: checksum mismatch: the file is corrupted or was edited by hand")
    try:
        vocab = {_parse_id(i): from_printable(t) for i, t in content["vocab"].items()}
        merges = [_parse_merge(m) for m in content["merges"]]
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None
    special_tokens = list(content["special_tokens"])
    _check_definition(vocab, merges, special_tokens, content["pattern"], str(path))
    for s, i in content["special_tokens"].items():
        if i != _special_id(vocab, s):
            raise ValueError(
                f"{path}: special token {s!r} has id {i!r}, but its bytes are token {_special_id(vocab, s)}"
            )
    return {"vocab": vocab, "merges": merges, "special_tokens": special_tokens, "pattern": content["pattern"]}


def _upgrade(content: Any, path: Path) -> dict[str, Any]:
    """Check format and version, and bring an older version up to VERSION one step at a time."""
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{path}: not a scratchlm tokenizer file (format {found!r}, expected {FORMAT!r})")
    version = content.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path}: format version {version!r} is not a positive integer")
    if version > VERSION:
        raise ValueError(
            f"{path}: format version {version} is not supported: written by a newer scratchlm (this one reads"
            f" <= {VERSION})"
        )
    while version < VERSION:
        if version not in _UPGRADES:
            raise ValueError(f"{path}: format version {version} is not supported: no upgrade to version {version + 1}")
        content = _UPGRADES[version](content)
        if content.get("version") != version + 1:
            raise AssertionError(f"upgrade from format version {version} must produce version {version + 1}")
        version += 1
    return content


def _parse_id(key: str) -> int:
    if not (key.isascii() and key.isdigit()) or str(int(key)) != key:
        raise ValueError(f"vocab id {key!r} is not a canonical non-negative integer")
    return int(key)


def _parse_merge(merge: str) -> tuple[bytes, bytes]:
    parts = merge.split(" ") if isinstance(merge, str) else []
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"merge {merge!r} is not two tokens separated by one space")
    return from_printable(parts[0]), from_printable(parts[1])


def _check_definition(
    vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens: list[str], pattern: str, where: str
) -> None:
    """What the encoder relies on: ids 0..n-1, unique special tokens in the vocab, merges of known tokens."""
    if sorted(vocab) != list(range(len(vocab))):
        gaps = sorted(set(range(len(vocab))) ^ set(vocab))
        raise ValueError(f"{where}: vocab ids must be exactly 0..{len(vocab) - 1}; first offending id {gaps[0]}")
    if any(not isinstance(b, bytes) or not b for b in vocab.values()):
        raise ValueError(f"{where}: vocab tokens must be non-empty bytes")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"{where}: special tokens are not unique: {special_tokens}")
    try:
        for s in special_tokens:
            _special_id(vocab, s)
        regex.compile(pattern)
    except (ValueError, regex.error) as e:
        raise ValueError(f"{where}: {e}") from None
    _check_merges(merges, set(vocab.values()), where)


def _check_merges(merges: list[tuple[bytes, bytes]], known: set[bytes], where: str) -> None:
    for rank, (left, right) in enumerate(merges):
        for tok in (left, right, left + right):
            if tok not in known:
                raise ValueError(
                    f"{where}: merge #{rank} ({left!r}, {right!r}) uses {tok!r}, which is not in the vocab"
                )


# ---------------------------------------------------------------------------------------------
# 4) Hugging Face `tokenizers` export


def export_hf_tokenizer_json(
    path: str | os.PathLike,
    vocab: dict[int, bytes],
    merges: list[tuple[bytes, bytes]],
    special_tokens: list[str],
    pattern: str,
) -> Path:
    """Write a `tokenizers` tokenizer.json that encodes text to the same ids as our Tokenizer.

    Pre-tokenization keeps exactly the regex matches, as our encoder's findall does: Split with
    invert=true and behavior "Removed" drops text between matches, where "Isolated" would keep it as
    extra pieces (the same thing for the GPT-2/GPT-4 patterns, which match every character).
    """
    _check_definition(vocab, merges, special_tokens, pattern, "export_hf_tokenizer_json")
    missing = set(range(256)) - {b[0] for b in vocab.values() if len(b) == 1}
    if missing:  # HF has no unk token here, so a byte without a token would vanish from the output silently
        raise ValueError(
            f"export_hf_tokenizer_json: vocab lacks {len(missing)} single-byte tokens (e.g. byte {min(missing)})"
        )
    special_ids = {_special_id(vocab, s): s for s in special_tokens}
    added = [
        {
            "id": i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, s in sorted(special_ids.items())
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
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Removed", "invert": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": _hf_bpe_model(vocab, merges, special_ids),
    }
    with atomic_write(path) as f:
        json.dump(content, f, ensure_ascii=False, indent=1)
    return Path(path)


def _hf_bpe_model(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_ids: dict[int, str]) -> dict:
    # Special tokens go into the model vocab as their text: HF gives an added token the id of the model
    # entry with the same string and otherwise a new id past the end, so a non-ASCII special token
    # under its byte-level spelling would get the wrong id.
    model_vocab: dict[str, int] = {}
    for i, b in sorted(vocab.items()):
        key = special_ids.get(i, to_printable(b))
        if key in model_vocab:
            raise ValueError(f"export_hf_tokenizer_json: ids {model_vocab[key]} and {i} both export as {key!r}")
        model_vocab[key] = i
    rendered = [(to_printable(a), to_printable(b)) for a, b in merges]
    for a, b in rendered:
        if not {a, b, a + b} <= model_vocab.keys():
            raise ValueError(
                f"export_hf_tokenizer_json: merge {a!r} {b!r} uses a special token's bytes, which HF cannot express"
            )
    return {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
        "vocab": model_vocab,
        "merges": [f"{a} {b}" for a, b in rendered],  # strings, not pairs: older tokenizers read only these
    }


# ---------------------------------------------------------------------------------------------
# reading helpers


def _read_text(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.is_file():
        raise TokenizerFileNotFoundError(f"tokenizer file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _read_json(path: str | os.PathLike, **kwargs: Any) -> Any:
    try:
        return json.loads(_read_text(path), **kwargs)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg} (truncated or corrupted?)"
        ) from None
