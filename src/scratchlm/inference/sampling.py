"""Choosing the next token from logits (temperature, top-k, top-p), and plain generation by full recompute.

`generate` re-runs the whole (cropped) sequence for every new token: simple and obviously correct, the
reference that the KV-cache engine is tested against.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")


def sampling_probs(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> Tensor:
    """logits: (..., vocab) -> float32 probabilities (..., vocab) after temperature, top-k and top-p: the
    distribution `sample_next` draws from (speculative decoding's rejection rule needs it whole).
    Temperature 0 gives the one-hot argmax."""
    check_sampling(temperature, top_k, top_p)
    logits = logits.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens strictly before it already hold top_p of the mass (the top one stays)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.softmax(logits, dim=-1)


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """logits: (batch, vocab) -> (batch,) token ids. temperature 0 means greedy (argmax)."""
    if temperature == 0:
        check_sampling(temperature, top_k, top_p)
        return logits.argmax(dim=-1)
    probs = sampling_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: torch.nn.Module, prompt: list[int], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_ids: Iterable[int] = ()) -> list[int]:
    """New token ids after `prompt` (not including it), stopping after a token in `stop_ids` (kept) or at
    max_new_tokens. The context is cropped to the model's last context_length tokens."""
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    context_length = model.config.context_length
    stop = set(stop_ids)
    ids = torch.tensor([prompt], device=device)
    new: list[int] = []
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            logits = model(ids[:, -context_length:])[:, -1]
            token = sample_next(logits, temperature, top_k, top_p, generator)
            new.append(int(token))
            if new[-1] in stop:
                break
            ids = torch.cat((ids, token[:, None]), dim=1)
    finally:
        model.train(was_training)
    return new
