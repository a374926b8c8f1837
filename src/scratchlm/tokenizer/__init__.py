"""Byte-level BPE tokenizer: training, encoding/decoding, token files, GPT-2 import, HF export."""

from __future__ import annotations

import json
import os
from pathlib import Path

from scratchlm.atomic import write_text_atomic
from scratchlm.tokenizer import io
from scratchlm.tokenizer.bpe import Tokenizer
from scratchlm.tokenizer.train import BPETrainConfig, train_bpe, train_files

__all__ = ["BPETrainConfig", "Tokenizer", "train_bpe", "train_tokenizer"]


def train_tokenizer(inputs: list[str | os.PathLike], out_dir: str | os.PathLike, config: BPETrainConfig) -> tuple[Tokenizer, dict]:
    """Train and write a tokenizer folder: our format, HF tokenizer.json, GPT-2 vocab/merges, stats.

    Returns the tokenizer and the training stats (also written as train_stats.json).
    """
    vocab, merges, stats = train_files(inputs, config)
    tok = Tokenizer(vocab, merges, config.special_tokens, config.pattern)
    out_dir = Path(out_dir)
    tok.save(out_dir)
    tok.export_hf(out_dir / "tokenizer.json")
    io.save_gpt2_files(out_dir, {i: b for i, b in vocab.items() if i not in tok.special_ids.values()}, merges)
    longest = sorted(vocab.values(), key=len, reverse=True)[:5]
    stats |= {
        "vocab_size": tok.vocab_size,
        "tokenizer_sha256": tok.hash,
        "longest_tokens": [b.decode("utf-8", "replace") for b in longest],
    }
    write_text_atomic(out_dir / "train_stats.json", json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return tok, stats
