"""A trained model and its tokenizer, ready to generate: on a device, in the weights' serving dtype."""

from __future__ import annotations

import os

import torch

from scratchlm.model import TransformerLM
from scratchlm.tokenizer import Tokenizer
from scratchlm.train.checkpoint import load_trained_model
from scratchlm.train.data import resolve_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto" -> bfloat16 on CUDA (decoding reads every weight per token: half the bytes), float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from {['auto', *DTYPES]}")
    return DTYPES[name]


def load_for_inference(checkpoint: str | os.PathLike, *, device: str = "auto", dtype: str = "auto",
                       tokenizer: str | os.PathLike | None = None) -> tuple[TransformerLM, Tokenizer]:
    """(model in eval mode, tokenizer): the checkpoint's weights cast to `dtype` on `device`; the tokenizer
    from `tokenizer` or else the run folder's tokenizer/."""
    target = resolve_device(device)
    trained = load_trained_model(checkpoint, target)
    tok = Tokenizer.load(tokenizer) if tokenizer else trained.tokenizer
    if tok is None:
        raise ValueError(f"no tokenizer beside {checkpoint}; pass --tokenizer")
    if tok.vocab_size > trained.model.config.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} tokens, more than the model's {trained.model.config.vocab_size}")
    return trained.model.to(resolve_dtype(dtype, target)).eval(), tok
