"""Sampling completions for evaluation and for RL rollouts: the one place that calls the inference engine.

Today this is `scratchlm.inference.generate_batch` (batched, KV-cached); swapping in a continuous-batching
engine only changes `generate_ids`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from scratchlm.inference import generate_batch
from scratchlm.tokenizer import Tokenizer

STOP_TOKENS = ("<|end|>", "<|endoftext|>")  # chat turn end (scratchlm.alignment.chat), document end


@dataclass
class Completion:
    prompt_ids: list[int]  # as fed to the model (cut from the left when it did not fit)
    ids: list[int]  # new tokens, stop token included when one was hit
    text: str  # new tokens decoded, stop token left out
    finished: bool  # a stop token ended it (False: max_new_tokens ran out)


def stop_ids(tokenizer: Tokenizer, names: Iterable[str] = STOP_TOKENS) -> list[int]:
    """Ids of the stop tokens the tokenizer has (a base model's tokenizer has no <|end|>)."""
    return [tokenizer.special_ids[n] for n in names if n in tokenizer.special_ids]


def fit_prompt(prompt_ids: list[int], context_length: int, max_new_tokens: int) -> list[int]:
    """The prompt's last tokens, leaving room for max_new_tokens (few-shot prompts lose their oldest shots)."""
    room = context_length - max_new_tokens
    if room < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in a context of {context_length}")
    return prompt_ids[-room:]


def generate_ids(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int, *, temperature: float = 0.0,
                 top_p: float | None = None, seed: int | None = None, stop: list[int] | None = None,
                 batch_size: int = 32, progress: bool = False) -> list[list[int]]:
    """New token ids per prompt, `batch_size` prompts per engine call. Prompts are batched in length order
    (less padding in the prefill) and returned in input order. Prompts must already fit (see fit_prompt)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    starts = range(0, len(order), batch_size)
    for n, start in enumerate(tqdm(starts, desc="generate", disable=not progress, leave=False)):
        rows = order[start : start + batch_size]
        batch_seed = None if seed is None else seed + n
        new = generate_batch(model, [prompts[i] for i in rows], max_new_tokens, temperature=temperature, top_p=top_p,
                             seed=batch_seed, stop_ids=stop or [])
        for i, ids in zip(rows, new, strict=True):
            out[i] = ids
    return out


def generate_texts(model: torch.nn.Module, tokenizer: Tokenizer, prompts: list[str], max_new_tokens: int, *,
                   temperature: float = 0.0, top_p: float | None = None, seed: int | None = None,
                   batch_size: int = 32, progress: bool = False) -> list[Completion]:
    """Completions of text prompts, stopping at <|end|> / <|endoftext|> when the tokenizer has them."""
    stop = stop_ids(tokenizer)
    context = model.config.context_length
    prompt_ids = [fit_prompt(tokenizer.encode(p), context, max_new_tokens) for p in prompts]
    new = generate_ids(model, prompt_ids, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop,
                       batch_size=batch_size, progress=progress)
    stop_set = set(stop)
    return [Completion(p, ids, tokenizer.decode([t for t in ids if t not in stop_set]), bool(ids) and ids[-1] in stop_set)
            for p, ids in zip(prompt_ids, new, strict=True)]
