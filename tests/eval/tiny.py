"""Tiny models, a byte-level tokenizer and run folders for the eval and alignment tests (fast on CPU)."""

from __future__ import annotations

from pathlib import Path

import torch

from scratchlm.config import to_dict
from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.tokenizer import Tokenizer
from scratchlm.train.checkpoint import save_checkpoint


def byte_tokenizer(special_tokens: tuple[str, ...] = ("<|endoftext|>",)) -> Tokenizer:
    """256 single bytes, no merges: every character is its bytes (257 tokens with <|endoftext|>)."""
    return Tokenizer({i: bytes([i]) for i in range(256)}, [], list(special_tokens))


def tiny_model(vocab_size: int = 260, *, context_length: int = 64, tie: bool = False, dtype: torch.dtype = torch.float32,
               seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=vocab_size, context_length=context_length, d_model=32, n_layers=2, n_heads=2,
                         tie_embeddings=tie, attention="naive")
    return TransformerLM(config, dtype=dtype)


def write_run(folder: Path, model: TransformerLM, tokenizer: Tokenizer, step: int = 0) -> Path:
    """A run folder that load_trained_model reads: checkpoint.pt + tokenizer/."""
    tokenizer.save(folder / "tokenizer")
    save_checkpoint(folder / "checkpoint.pt", model=model, optimizer=None, step=step,
                    config={"model": to_dict(model.config)}, tokenizer_sha256=tokenizer.hash)
    return folder
