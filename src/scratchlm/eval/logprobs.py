"""Per-token log-probabilities and entropies of a response under a model: the one quantity that SFT (its
loss), DPO (log pi(y|x)), GRPO (ratios, KL) and evaluation (likelihood scoring) all read.

Columns line up with the input: column t of the result is log p(input_ids[t] | input_ids[:t]), so a
response mask over `input_ids` selects the response's terms directly (column 0 has no prediction: 0).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from scratchlm.optim.loss import logsumexp


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """torch.autocast for bfloat16 compute; a no-op for float32 (the CPU default)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def token_logprobs(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """logits (..., V), targets (...) long -> (log p(target) (...), entropy of the distribution (...)).

    Computed in at least float32 (bf16 logits lose too much in the normalizer). The entropy is a metric and
    carries no gradient: it needs the whole softmax, which autograd would otherwise keep for backward.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    lse = logsumexp(logits)  # (...)
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    with torch.no_grad():
        probs = (logits - lse.unsqueeze(-1)).exp()  # (..., V)
        entropy = lse - (probs * logits).sum(-1)  # H = lse - E_p[logit]
    return logprobs, entropy


def response_logprobs(model: torch.nn.Module, input_ids: Tensor, response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """input_ids (B, T) long, response_mask (B, T) bool -> (logprobs (B, T), entropy (B, T)), both zero outside
    the mask; logprobs[b, t] = log p(input_ids[b, t] | input_ids[b, :t]). Sum over t gives log pi(y | x).

    The mask must be False at column 0 (nothing predicts the first token). Run under `autocast_context`
    for bf16; gradients flow through `logprobs` into the model.
    """
    if input_ids.shape != response_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and response_mask {tuple(response_mask.shape)} differ")
    if bool(response_mask[:, 0].any()):
        raise ValueError("response_mask is True at column 0, which no position predicts")
    logits = model(input_ids[:, :-1])  # (B, T-1, V): position t predicts token t+1
    logprobs, entropy = token_logprobs(logits, input_ids[:, 1:])  # (B, T-1)
    mask = response_mask[:, 1:]
    zero = logprobs.new_zeros(input_ids.shape[0], 1)
    logprobs = torch.cat([zero, torch.where(mask, logprobs, 0.0)], dim=1)
    entropy = torch.cat([zero, torch.where(mask, entropy, 0.0)], dim=1)
    return logprobs, entropy


def pad_batch(sequences: list[list[int]], masks: list[list[bool]], device: torch.device | str | None = None,
              pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Right-pad token lists into (B, T) ids and a (B, T) bool mask (False on padding). Right padding needs no
    attention mask: a causal model's real tokens never attend to the padding after them."""
    if not sequences:
        raise ValueError("no sequences to batch")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (seq, m) in enumerate(zip(sequences, masks, strict=True)):
        if len(seq) != len(m):
            raise ValueError(f"sequence {row} has {len(seq)} tokens but {len(m)} mask entries")
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(m)] = torch.tensor(m, dtype=torch.bool)
    return ids.to(device), mask.to(device)
