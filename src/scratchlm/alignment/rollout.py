"""Rollouts for RL: G sampled responses per prompt, as token tensors ready for log-prob passes.

`rollout` is the one function to change when generation moves to another engine (it goes through
scratchlm.eval.generation, which calls the inference package).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from scratchlm.alignment.chat import render_prompt
from scratchlm.eval.generation import fit_prompt, generate_ids, stop_ids
from scratchlm.eval.logprobs import pad_batch
from scratchlm.tokenizer import Tokenizer


@dataclass
class Rollouts:
    prompts: list[str]  # N = len(unique prompts) x group_size, each prompt repeated group_size times in a row
    texts: list[str]  # responses, stop token left out
    finished: list[bool]  # ended with a stop token
    input_ids: Tensor  # (N, T) prompt + response, right-padded
    response_mask: Tensor  # (N, T) bool: response tokens (stop token included)

    @property
    def response_lengths(self) -> Tensor:
        return self.response_mask.sum(-1)


@torch.no_grad()
def rollout(model: torch.nn.Module, tokenizer: Tokenizer, prompts: list[str], group_size: int, *, max_new_tokens: int,
            temperature: float = 1.0, top_p: float | None = None, seed: int | None = None,
            batch_size: int = 256) -> Rollouts:
    """Sample `group_size` responses to each user prompt (rendered with the chat template)."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    context = model.config.context_length
    encoded = [fit_prompt(tokenizer.encode(render_prompt(p)), context, max_new_tokens) for p in prompts]
    repeated = [ids for ids in encoded for _ in range(group_size)]
    stop = stop_ids(tokenizer)
    new = generate_ids(model, repeated, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop,
                       batch_size=batch_size)
    stop_set = set(stop)
    device = next(model.parameters()).device
    ids, mask = pad_batch([p + r for p, r in zip(repeated, new, strict=True)],
                          [[False] * len(p) + [True] * len(r) for p, r in zip(repeated, new, strict=True)], device=device)
    return Rollouts(prompts=[p for p in prompts for _ in range(group_size)],
                    texts=[tokenizer.decode([t for t in r if t not in stop_set]) for r in new],
                    finished=[bool(r) and r[-1] in stop_set for r in new], input_ids=ids, response_mask=mask)
