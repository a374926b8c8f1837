"""Checkpoints: one file with model, optimizer, step, RNG states, config and tokenizer identity.

Written atomically (temp file + rename): a run killed mid-save keeps its previous checkpoint intact.
The data position needs no state of its own: batches are a function of (seed, rank, step), see train.data.
Sharded runs (scratchlm.parallel) gather full state to rank 0 and save it here in the same layout.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scratchlm.atomic import atomic_path
from scratchlm.config import from_dict
from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.tokenizer import Tokenizer

FORMAT, VERSION = "scratchlm.checkpoint", 1


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`. The states may come back on the GPU (a checkpoint loaded with map_location="cuda");
    torch takes them only as CPU byte tensors."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module | dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer | dict[str, Any] | None, step: int, config: dict[str, Any],
                    tokenizer_sha256: str | None, **extra: Any) -> None:
    """`config` is the run's resolved config as a plain dict (`scratchlm.config.to_dict`). `model` and
    `optimizer` may be given as their state_dicts (sharded runs gather full state first)."""
    state = {
        "format": FORMAT,
        "version": VERSION,
        "step": step,
        "config": config,
        "tokenizer_sha256": tokenizer_sha256,
        "model": model.state_dict() if isinstance(model, torch.nn.Module) else model,
        "optimizer": optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer,
        "rng": rng_state(),
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's contents; a clear error for a missing, truncated, foreign or newer-format file."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupted?): {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a scratchlm checkpoint")
    if state.get("version", 0) > VERSION:
        raise ValueError(f"{path} has checkpoint format version {state['version']}; this scratchlm reads up to {VERSION}")
    return state


def load_model_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """`model.load_state_dict(strict=True)` with an error that says which checkpoint does not fit."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {source} does not fit this model config: {e}") from e


@dataclass
class TrainedModel:
    """A model loaded from a checkpoint, with what is needed to use it."""

    model: TransformerLM
    config: dict[str, Any]  # the run's resolved config, as saved
    tokenizer: Tokenizer | None  # the run folder's tokenizer/ copy, when present
    step: int


def load_trained_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedModel:
    """Model (eval mode, float32) from a checkpoint file or run folder; its tokenizer from `<run>/tokenizer`."""
    path = Path(path)
    state = load_checkpoint(path, map_location=device)
    model_config = from_dict(ModelConfig, state["config"]["model"])
    model = TransformerLM(model_config, device=device)
    load_model_state(model, state["model"], path)
    model.eval()
    run_dir = path if path.is_dir() else path.parent
    tokenizer = None
    if (run_dir / "tokenizer").is_dir():
        tokenizer = Tokenizer.load(run_dir / "tokenizer")
        if state.get("tokenizer_sha256") and tokenizer.hash != state["tokenizer_sha256"]:
            raise ValueError(f"{run_dir / 'tokenizer'} is not the tokenizer {path} was trained with")
    return TrainedModel(model, state["config"], tokenizer, state["step"])
