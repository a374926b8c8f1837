"""Byte-level BPE tokenizer: training, encoding/decoding, token files, GPT-2 import, HF export."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from scratchlm.atomic import write_text_atomic
from scratchlm.tokenizer import io
from scratchlm.tokenizer.bpe import Tokenizer
from scratchlm.tokenizer.corpus import check_inputs
from scratchlm.tokenizer.train import BPETrainConfig, count_pretokens, learn_bpe, train_bpe

__all__ = ["BPETrainConfig", "Tokenizer", "train_bpe", "train_tokenizer"]


def train_tokenizer(inputs: list[str | os.PathLike], out_dir: str | os.PathLike, config: BPETrainConfig) -> tuple[Tokenizer, dict]:
    """Train and write a tokenizer folder: our format, HF tokenizer.json, GPT-2 vocab/merges, stats.

    Returns the tokenizer and the training stats (also written as train_stats.json).
    """
    paths = check_inputs(inputs)
    t0 = time.perf_counter()
    counts = count_pretokens(paths, config)
    if not counts:
        raise ValueError(f"empty corpus: no text outside special tokens in {[str(p) for p in paths]}")
    t1 = time.perf_counter()
    vocab, merges = learn_bpe(counts, config.vocab_size, config.special_tokens, progress=config.progress)
    t2 = time.perf_counter()
    tok = Tokenizer(vocab, merges, config.special_tokens, config.pattern)
    out_dir = Path(out_dir)
    tok.save(out_dir)
    tok.export_hf(out_dir / "tokenizer.json")
    io.save_gpt2_files(out_dir, {i: b for i, b in vocab.items() if i not in tok.special_ids.values()}, merges)
    longest = sorted(vocab.values(), key=len, reverse=True)[:5]
    stats = {
        "input_bytes": sum(p.stat().st_size for p in paths),
        "distinct_pretokens": len(counts),
        "vocab_size": tok.vocab_size,
        "merges": len(merges),
        "pretokenize_seconds": round(t1 - t0, 2),
        "merge_seconds": round(t2 - t1, 2),
        "tokenizer_sha256": tok.hash,
        "longest_tokens": [b.decode("utf-8", "replace") for b in longest],
    }
    write_text_atomic(out_dir / "train_stats.json", json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return tok, stats
