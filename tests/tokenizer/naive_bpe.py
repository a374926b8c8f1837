"""The naive BPE trainer the course describes: recount every pair after every merge.

Slow and obviously correct; the reference our incremental trainer must match merge for merge.
"""

from __future__ import annotations

from collections import Counter

import regex


def naive_train_bpe(text: str, vocab_size: int, special_tokens: list[str], pattern: str):
    vocab = {i: bytes([i]) for i in range(256)}
    for s in special_tokens:
        vocab[len(vocab)] = s.encode("utf-8")
    pieces = [text]
    if special_tokens:
        pieces = regex.split("|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True)), text)
    counts = Counter(p for piece in pieces for p in regex.findall(pattern, piece))
    words = {tuple(bytes([c]) for c in p.encode("utf-8")): n for p, n in counts.items()}
    merges = []
    while len(vocab) < vocab_size:
        pairs = Counter()
        for w, n in words.items():
            for pair in zip(w, w[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        vocab[len(vocab)] = best[0] + best[1]
        new_words = Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] += n
        words = new_words
    return vocab, merges
