"""Byte-level BPE encoding and decoding with a learned (or GPT-2) vocabulary and merge list.

Encoding: split on special tokens (longest wins), pre-tokenize with the pattern, then apply merges
by rank inside each pre-token. Results are cached at two levels: space-led units (see
pretokenize.UNIT_SPLIT) and pre-tokens, so on real text the regex and the merge loop run only on
text not seen before.
"""

from __future__ import annotations

import functools
import heapq
import os
from collections.abc import Iterable, Iterator
from itertools import chain, islice, repeat

import regex

from scratchlm.tokenizer import io
from scratchlm.tokenizer.pretokenize import Splitter, check_special_tokens, resolve_pattern, split_joinable, unit_split

CACHE_LIMIT = 1 << 20  # entries per cache; the older half is dropped when full, so memory stays bounded
LONG_PIECE = 256  # pre-tokens longer than this (in bytes) merge with a heap in O(n log n)


class Tokenizer:
    """A byte-level BPE tokenizer.

    vocab: id -> token bytes, ids 0..n-1; it must contain all 256 single bytes.
    merges: (left, right) byte pairs in rank order; left + right must be in vocab.
    special_tokens: strings encoded as one id each; reuses a vocab entry with the same bytes,
        otherwise appended to the vocabulary.
    pattern: pre-tokenization regex or a name in pretokenize.PATTERNS.
    """

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: list[str] | None = None,
        pattern: str = "gpt2",
    ):
        self.pattern = resolve_pattern(pattern)
        self.vocab = dict(vocab)
        self.merges = list(merges)
        self.special_tokens = check_special_tokens(special_tokens or [])
        self._id_bytes = _check_vocab(self.vocab)
        self._ids_of = {b: i for i, b in sorted(self.vocab.items(), reverse=True)}  # lowest id wins
        self.special_ids = {}
        for s in self.special_tokens:
            sid = self._ids_of.get(s.encode("utf-8"))
            if sid is None:
                sid = len(self._id_bytes)
                self.vocab[sid] = s.encode("utf-8")
                self._id_bytes.append(self.vocab[sid])
            self.special_ids[s] = sid
        self._byte_ids = [self._ids_of[bytes([b])] for b in range(256)]
        self._ranks, self._merged = self._merge_tables()
        self._compile()

    def _merge_tables(self) -> tuple[dict[tuple[int, int], int], list[int]]:
        """(left id, right id) -> rank, and rank -> merged id."""
        ranks, merged = {}, []
        for rank, (left, right) in enumerate(self.merges):
            try:
                key = (self._ids_of[left], self._ids_of[right])
                merged.append(self._ids_of[left + right])
            except KeyError as e:
                raise ValueError(f"merge #{rank} {left!r} + {right!r}: token {e.args[0]!r} is not in the vocabulary") from None
            ranks.setdefault(key, rank)
        return ranks, merged

    def _compile(self) -> None:
        self._pat = regex.compile(self.pattern)
        self._unit_split = unit_split(self.pattern)
        self._splitter = Splitter(self.pattern, self.special_tokens)
        self._piece_cache: dict[str, tuple[int, ...]] = {}
        self._unit_cache: dict[str, tuple[int, ...]] = {}

    def __getstate__(self) -> dict:
        # Workers get the tokenizer by pickling: ship the definition, rebuild tables there.
        return {"vocab": self.vocab, "merges": self.merges, "special_tokens": self.special_tokens, "pattern": self.pattern}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    # ----------------------------------------------------------------------------------------
    # construction from files

    @classmethod
    def from_files(cls, vocab_path, merges_path, special_tokens: list[str] | None = None, pattern: str = "gpt2") -> Tokenizer:
        """Load GPT-2-format vocab.json + merges.txt."""
        vocab, merges = io.load_gpt2_files(vocab_path, merges_path)
        return cls(vocab, merges, special_tokens, pattern)

    def save(self, directory: str | os.PathLike) -> None:
        """Write our format (scratchlm_tokenizer.json, checksummed) into `directory`, atomically."""
        io.save_tokenizer(directory, self.vocab, self.merges, self.special_tokens, self.pattern)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer:
        return cls(**io.load_tokenizer(directory))

    def export_hf(self, path: str | os.PathLike) -> None:
        """Write a Hugging Face `tokenizers` tokenizer.json that encodes exactly like this tokenizer."""
        io.export_hf_tokenizer_json(path, self.vocab, self.merges, self.special_tokens, self.pattern)

    @property
    def vocab_size(self) -> int:
        return len(self._id_bytes)

    @functools.cached_property
    def hash(self) -> str:
        """sha256 of the tokenizer's definition: token files record it to catch mismatched tokenizers.

        Cached (0.1-0.2 s on the GPT-2 vocabulary); a Tokenizer is not meant to change after construction.
        """
        return io.tokenizer_hash(self.vocab, self.merges, self.special_tokens, self.pattern)

    # ----------------------------------------------------------------------------------------
    # encoding

    def encode(self, text: str) -> list[int]:
        if not self.special_tokens:
            return self._encode_ordinary(text)
        ids: list[int] = []
        pos = 0
        for m in self._splitter.special_re.finditer(text):
            ids += self._encode_ordinary(text[pos : m.start()])
            ids.append(self.special_ids[m.group()])
            pos = m.end()
        ids += self._encode_ordinary(text[pos:])
        return ids

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Encode a stream of strings (e.g. an open file) lazily, with memory bounded by the chunk size.

        Text is regrouped into chunks cut only where the result cannot depend on what follows
        (pretokenize.Splitter.safe_cut), so the ids equal encode("".join(iterable)).
        """
        for ids in self.encode_chunks(iterable):
            yield from ids

    def encode_chunks(self, iterable: Iterable[str], min_chars: int = 1 << 16) -> Iterator[list[int]]:
        """Like encode_iterable, one list of ids per chunk of >= min_chars (for callers that batch)."""
        for chunk in self._splitter.chunks(iterable, min_chars=min_chars):
            yield self.encode(chunk)

    def _encode_ordinary(self, text: str) -> list[int]:
        """Encode text that contains no special tokens."""
        if not text:
            return []
        if self._unit_split is None:
            return self._encode_pieces(text)
        # Units after the first lost their leading space in the split; cache keys omit it too.
        head, *rest = self._unit_split.split(text)
        cache = self._unit_cache
        try:
            ids = list(chain.from_iterable(map(cache.__getitem__, rest)))
        except KeyError:
            self._learn_units(rest)
            ids = list(chain.from_iterable(map(cache.__getitem__, rest)))
        return self._encode_pieces(head) + ids if head else ids

    def _learn_units(self, units: list[str]) -> None:
        """Encode and cache the units not cached yet, with one regex call and one BPE pass per new piece.

        """
        cache = self._unit_cache
        missing = set(units).difference(cache)
        if _make_room(cache, len(missing)):
            missing = set(units).difference(cache)
        joined, lone = split_joinable(missing)
        for unit in lone:
            cache[unit] = tuple(self._encode_pieces(" " + unit))
        if not joined:
            return
        pieces = self._pat.findall(" " + " ".join(joined))
        piece_cache = self._piece_cache
        new_pieces = set(pieces).difference(piece_cache)
        if _make_room(piece_cache, len(new_pieces)):
            new_pieces = set(pieces).difference(piece_cache)
        for piece in new_pieces:
            piece_cache[piece] = self._bpe(piece.encode("utf-8"))
        # Walk the pieces, closing a unit each time they cover its " " + text.
        k, left, ids = 0, len(joined[0]) + 1, []
        for piece in pieces:
            ids += piece_cache[piece]
            left -= len(piece)
            if not left:
                cache[joined[k]] = tuple(ids)
                k += 1
                left, ids = (len(joined[k]) + 1 if k < len(joined) else -1), []

    def _encode_pieces(self, text: str) -> list[int]:
        cache = self._piece_cache
        _make_room(cache, 0)
        ids: list[int] = []
        for piece in self._pat.findall(text):
            toks = cache.get(piece)
            if toks is None:
                toks = cache[piece] = self._bpe(piece.encode("utf-8"))
            ids += toks
        return ids

    def _bpe(self, data: bytes) -> tuple[int, ...]:
        """Apply merges to one pre-token: repeatedly merge the lowest-rank adjacent pair, leftmost first.

        `pair_ranks[i]` is the rank of (ids[i], ids[i+1]); a merge only changes its two neighbours,
        and min/index run in C. Leftmost-first equals GPT-2's "merge every occurrence of the best
        pair" because a merge never creates a pair of lower rank than itself.
        """
        ids = list(map(self._byte_ids.__getitem__, data))
        if len(ids) > LONG_PIECE:
            return _bpe_heap(ids, self._ranks, self._merged)
        get, merged, none = self._ranks.get, self._merged, len(self._merged)
        pair_ranks = list(map(get, zip(ids, ids[1:]), repeat(none)))
        while pair_ranks:
            rank = min(pair_ranks)
            if rank == none:
                break
            i = pair_ranks.index(rank)
            ids[i] = merged[rank]
            del ids[i + 1], pair_ranks[i]
            if i < len(pair_ranks):
                pair_ranks[i] = get((ids[i], ids[i + 1]), none)
            if i > 0:
                pair_ranks[i - 1] = get((ids[i - 1], ids[i]), none)
        return tuple(ids)

    # ----------------------------------------------------------------------------------------
    # decoding

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = list(ids)
        table = self._id_bytes
        try:
            in_range = not ids or (min(ids) >= 0 and max(ids) < len(table))
            if in_range:
                return b"".join(map(table.__getitem__, ids))
        except TypeError:
            bad = next(i for i in ids if not isinstance(i, int))
            raise ValueError(f"token ids must be integers, got {bad!r}") from None
        bad = next(i for i in ids if not 0 <= i < len(table))
        raise ValueError(f"token id {bad} is out of range for a vocabulary of {len(table)} tokens")

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def _make_room(cache: dict, n_new: int) -> bool:
    """Drop the older half of `cache` (dicts keep insertion order) if n_new more entries would overflow it.

    Returns whether anything was dropped. Recently learned entries, often the frequent ones of the
    current text, survive.
    """
    if len(cache) + n_new <= CACHE_LIMIT:
        return False
    for key in list(islice(cache, len(cache) // 2 + 1)):
        del cache[key]
    return True


def _bpe_heap(ids: list[int], ranks: dict[tuple[int, int], int], merged: list[int]) -> tuple[int, ...]:
    """BPE on a long pre-token: a doubly linked list of tokens and a heap of (rank, position) pairs.

    Equal ranks pop left to right, so overlapping pairs ("a a a") merge as in the simple loop. Valid
    merge lists only create pairs of later rank than the merge that produced them, which makes this
    order equal to "merge every occurrence of the lowest rank, then repeat".
    """
    n = len(ids)
    tok = list(ids)
    nxt = list(range(1, n + 1))
    prv = list(range(-1, n - 1))
    alive = [True] * n
    heap = [(ranks[p], i) for i, p in enumerate(zip(ids, ids[1:])) if p in ranks]
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        j = nxt[i] if alive[i] else n
        if j >= n:
            continue
        if ranks.get((tok[i], tok[j])) != rank:
            continue  # stale: one side was merged since this entry was pushed
        tok[i] = merged[rank]
        alive[j] = False
        nxt[i] = nxt[j]
        if nxt[j] < n:
            prv[nxt[j]] = i
        for left in (prv[i], i):
            right = nxt[left] if left >= 0 else n
            if left >= 0 and right < n and (tok[left], tok[right]) in ranks:
                heapq.heappush(heap, (ranks[tok[left], tok[right]], left))
    out, i = [], 0
    while i < n:
        out.append(tok[i])
        i = nxt[i]
    return tuple(out)


def _check_vocab(vocab: dict[int, bytes]) -> list[bytes]:
    """The vocab as a list indexed by id, after checking it is usable for byte-level BPE."""
    if sorted(vocab) != list(range(len(vocab))):
        raise ValueError(f"vocabulary ids must be exactly 0..{len(vocab) - 1} without gaps")
    if any(not isinstance(b, bytes) or not b for b in vocab.values()):
        raise ValueError("vocabulary tokens must be non-empty bytes")
    missing = set(range(256)) - {b[0] for b in vocab.values() if len(b) == 1}
    if missing:
        raise ValueError(f"vocabulary lacks {len(missing)} single-byte tokens (e.g. byte {min(missing)}): byte-level BPE needs all 256")
    return [vocab[i] for i in range(len(vocab))]
