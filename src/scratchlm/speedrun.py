"""The whole pipeline end to end on a small default: train a tokenizer on real text, encode a train/val
split into token files, train the `cpu-tiny` model, report validation loss and a sample. About 3 minutes
on 2 CPU cores. Later stages (alignment, ...) extend this run.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.atomic import write_text_atomic
from scratchlm.config import build_config
from scratchlm.data import sources
from scratchlm.tokenizer import BPETrainConfig, train_tokenizer
from scratchlm.tokenizer.corpus import ByteRange, iter_blocks
from scratchlm.tokenizer.token_files import encode_files, read_tokens, token_stats
from scratchlm.train import TrainConfig, Trainer

log = logging.getLogger(__name__)


def default_train_config() -> TrainConfig:
    return build_config(TrainConfig, "train/cpu-tiny")


@dataclass(kw_only=True)
class SpeedrunConfig:
    corpus: list[str] = field(
        default_factory=lambda: ["tinystories/tinystories_valid_head.txt"],
        metadata={"help": "files under the data folder (see `scratchlm data where`)"},
    )
    fallback_download: str = field(default="tinystories-valid", metadata={"help": "corpus to download when the data folder is absent"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of the corpus (its end) held out for validation"})
    out: str = field(default="runs/speedrun", metadata={"help": "output folder"})
    tokenizer: BPETrainConfig = field(default_factory=lambda: BPETrainConfig(vocab_size=4096))
    train: TrainConfig = field(default_factory=default_train_config, metadata={"help": "training run (preset train/cpu-tiny)"})

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


def resolve_corpus(config: SpeedrunConfig) -> list[Path]:
    try:
        return [sources.shared_data_path(p) for p in config.corpus]
    except FileNotFoundError as e:
        log.warning("%s; downloading %s instead", e, config.fallback_download)
        return [sources.download(config.fallback_download)]


def split_text(paths: list[Path], val_fraction: float, out_dir: Path) -> tuple[Path, Path]:
    """Concatenate the corpus and cut it at the blank line nearest to the last `val_fraction` of it (so no
    document straddles the split): train.txt and val.txt in out_dir. For small corpora: read into memory."""
    text = "\n\n".join("".join(iter_blocks(ByteRange(str(p)))) for p in paths)
    target = int(len(text) * (1 - val_fraction))
    cut = text.rfind("\n\n", 0, target)
    cut = target if cut <= 0 else cut + 2
    train, val = out_dir / "train.txt", out_dir / "val.txt"
    write_text_atomic(train, text[:cut])
    write_text_atomic(val, text[cut:])
    return train, val


def run(config: SpeedrunConfig, resume: bool = False) -> dict[str, Any]:
    """1) tokenizer  2) train/val token files  3) training  4) validation loss and a sample. Returns a summary."""
    out = Path(config.out)
    corpus = resolve_corpus(config)
    tok, tok_stats = train_tokenizer(corpus, out / "tokenizer", config.tokenizer)
    train_txt, val_txt = split_text(corpus, config.val_fraction, out / "text")
    progress = config.tokenizer.progress
    train_meta = encode_files(tok, [train_txt], out / "train.bin", progress=progress)
    encode_files(tok, [val_txt], out / "val.bin", progress=progress)
    stats = token_stats(tok, read_tokens(out / "train.bin"), train_meta["text_bytes"])

    cfg = config.train
    cfg.data.train, cfg.data.val, cfg.data.tokenizer = str(out / "train.bin"), str(out / "val.bin"), str(out / "tokenizer")
    cfg.out = str(out / "model")
    cfg.model.vocab_size = tok.vocab_size
    if not resume:
        shutil.rmtree(cfg.out, ignore_errors=True)  # a speedrun starts over unless asked to resume
    trainer = Trainer(cfg, resume=resume)
    summary = trainer.fit()
    return {
        "corpus": [str(p) for p in corpus],
        "tokenizer": tok_stats,
        "tokens": train_meta["count"],
        "stats": stats,
        "params": trainer.model.num_params(),
        "training": summary,
    }
