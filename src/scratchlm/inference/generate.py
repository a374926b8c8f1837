"""Batched generation of a list of prompts: the continuous-batching `Engine` with one slot per prompt.

Prompts of different lengths share the batch: each slot writes its own positions of the static cache (see
`KVCache`), so no padding is needed. Sampling follows the engine's seeded rule: prompt i of a call seeded s
draws with seed `request_seed(s, i)`, so its tokens do not depend on the other prompts.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from scratchlm.inference.engine import Engine, EngineConfig, SamplingParams, request_seed


@torch.no_grad()
def generate_batch(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int, *,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   seed: int | None = None, stop_ids: Iterable[int] = (), repetition_penalty: float = 1.0
                   ) -> list[list[int]]:
    """New tokens for each prompt (stop token included when hit). Prompt + new tokens must fit in the
    model's context (a cache does not slide: a clear error instead of silently forgetting the start)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt must hold at least one token")
    total = max(len(p) for p in prompts) + max_new_tokens
    if total > model.config.context_length:
        raise ValueError(f"prompt ({total - max_new_tokens} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                         f"context length {model.config.context_length}")
    engine = Engine(model, EngineConfig(max_slots=len(prompts), max_len=max(total, 2), sync_every=16))
    was_training = model.training
    try:
        params = [SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                 repetition_penalty=repetition_penalty, stop_token_ids=tuple(stop_ids),
                                 seed=None if seed is None else request_seed(seed, i)) for i in range(len(prompts))]
        return [c.token_ids for c in engine.generate(prompts, params)]
    finally:
        model.train(was_training)
