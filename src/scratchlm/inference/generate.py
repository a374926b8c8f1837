"""Generation with a KV cache: one prefill pass over the prompts, then one token per step for every row.

Prompts of different lengths share the batch: each row is padded on the right for the prefill, its last
real position's logits start decoding, and every decode step writes each row at its own next position
(the padding's cache slots are overwritten before any query can see them, see `KVCache`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from scratchlm.inference.kv_cache import KVCache
from scratchlm.inference.sampling import sample_next


@torch.no_grad()
def generate_batch(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int, *,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   seed: int | None = None, stop_ids: Iterable[int] = ()) -> list[list[int]]:
    """New tokens for each prompt (stop token included when hit). Prompt + new tokens must fit in the
    model's context (a cache does not slide: a clear error instead of silently forgetting the start)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt must hold at least one token")
    lengths = torch.tensor([len(p) for p in prompts])
    total = int(lengths.max()) + max_new_tokens
    if total > model.config.context_length:
        raise ValueError(f"prompt ({int(lengths.max())} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                         f"context length {model.config.context_length}")
    param = next(model.parameters())
    device = param.device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    cache = KVCache(model.config, len(prompts), total, device=device, dtype=param.dtype)
    tokens = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = torch.tensor(prompt)
    tokens, lengths = tokens.to(device), lengths.to(device)
    was_training = model.training
    model.eval()
    try:
        logits = model(tokens, torch.arange(tokens.shape[1], device=device), kv_cache=cache)
        last = logits[torch.arange(len(prompts), device=device), lengths - 1]  # (batch, vocab)
        return _decode(model, cache, last, lengths, max_new_tokens, set(stop_ids),
                       dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator))
    finally:
        model.train(was_training)


def _decode(model, cache: KVCache, last: torch.Tensor, positions: torch.Tensor, max_new_tokens: int,
            stop: set[int], sampling: dict, check_every: int = 16) -> list[list[int]]:
    """Decode on the device: tokens and the finished flags stay there, and the host looks at them only every
    `check_every` steps (to stop early) and once at the end — no synchronisation per token."""
    device = last.device
    out = torch.empty(len(positions), max_new_tokens, dtype=torch.long, device=device)  # (batch, max_new)
    stop_ids = torch.tensor(sorted(stop), dtype=torch.long, device=device)
    done = torch.zeros(len(positions), dtype=torch.bool, device=device)  # (batch,)
    steps = max_new_tokens
    for step in range(max_new_tokens):
        next_ids = sample_next(last, **sampling)  # (batch,)
        out[:, step] = next_ids
        done |= torch.isin(next_ids, stop_ids)
        if step == max_new_tokens - 1 or ((step + 1) % check_every == 0 and bool(done.all())):
            steps = step + 1
            break
        last = model(next_ids[:, None], positions[:, None], kv_cache=cache)[:, -1]
        positions = positions + 1
    return [_until_stop(row, stop) for row in out[:, :steps].tolist()]


def _until_stop(tokens: list[int], stop: set[int]) -> list[int]:
    """A row's tokens up to and including its first stop token (rows that stopped kept decoding junk)."""
    for i, token in enumerate(tokens):
        if token in stop:
            return tokens[: i + 1]
    return tokens
