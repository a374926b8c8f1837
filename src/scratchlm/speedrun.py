"""The whole pipeline end to end on a small default. Today: train a tokenizer on real text, encode the
corpus into a token file, report compression. Later stages (model, training, ...) extend this run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.data import sources
from scratchlm.tokenizer import BPETrainConfig, train_tokenizer
from scratchlm.tokenizer.token_files import encode_files, read_tokens, token_stats

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class SpeedrunConfig:
    corpus: list[str] = field(
        default_factory=lambda: ["tinystories/tinystories_valid_head.txt", "pretrain/wikipedia-valid.txt.xz"],
        metadata={"help": "files under the data folder (see `scratchlm data where`)"},
    )
    fallback_download: str = field(default="tinystories-valid", metadata={"help": "corpus to download when the data folder is absent"})
    out: str = field(default="runs/speedrun", metadata={"help": "output folder"})
    tokenizer: BPETrainConfig = field(default_factory=lambda: BPETrainConfig(vocab_size=8192))


def resolve_corpus(config: SpeedrunConfig) -> list[Path]:
    try:
        return [sources.shared_data_path(p) for p in config.corpus]
    except FileNotFoundError as e:
        log.warning("%s; downloading %s instead", e, config.fallback_download)
        return [sources.download(config.fallback_download)]


def run(config: SpeedrunConfig) -> dict:
    """1) tokenizer  2) token file  3) compression stats and an example. Returns a summary."""
    out = Path(config.out)
    corpus = resolve_corpus(config)
    tok, train_stats = train_tokenizer(corpus, out / "tokenizer", config.tokenizer)
    meta = encode_files(tok, corpus, out / "tokens.bin", progress=config.tokenizer.progress)
    example = "Once upon a time, a little robot learned to read the whole internet."
    return {
        "corpus": [str(p) for p in corpus],
        "train": train_stats,
        "tokens": meta["count"],
        "example": [tok.decode([i]) for i in tok.encode(example)],  # one string per token
        "stats": token_stats(tok, read_tokens(out / "tokens.bin"), meta["text_bytes"]),
    }
