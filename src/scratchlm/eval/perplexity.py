"""Perplexity and bits per byte of a model on held-out text.

The text is tokenized once and cut into windows of context_length + 1 tokens that overlap by one token,
so every token after the first is predicted exactly once (with less context at the start of each window
than a sliding window would give: the cheap, standard trade-off; perplexity is then a slight overestimate).
Bits per byte divides by the UTF-8 bytes of the predicted tokens, which makes models with different
tokenizers comparable.
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from scratchlm.eval.logprobs import autocast_context
from scratchlm.optim.loss import bits_per_byte, perplexity, token_losses
from scratchlm.tokenizer import Tokenizer


@torch.no_grad()
def text_perplexity(model: torch.nn.Module, tokenizer: Tokenizer, text: str, *, batch_size: int = 8,
                    max_windows: int | None = None, dtype: torch.dtype = torch.float32,
                    progress: bool = False) -> dict[str, float | int]:
    """{loss (nats/token), perplexity, bits_per_byte, tokens, bytes} of `text` under `model`."""
    ids = tokenizer.encode(text)
    width = model.config.context_length
    if len(ids) < 2:
        raise ValueError("the text must hold at least two tokens")
    starts = list(range(0, len(ids) - 1, width))[:max_windows]
    device = next(model.parameters()).device
    total_nats, total_tokens, total_bytes = 0.0, 0, 0
    model.eval()
    for b in tqdm(range(0, len(starts), batch_size), desc="perplexity", disable=not progress, leave=False):
        windows = [ids[s : s + width + 1] for s in starts[b : b + batch_size]]
        longest = max(len(w) for w in windows)
        batch = torch.full((len(windows), longest), -100, dtype=torch.long)
        for row, w in enumerate(windows):
            batch[row, : len(w)] = torch.tensor(w)
            total_bytes += len(tokenizer.decode_bytes(w[1:]))
        batch = batch.to(device)
        inputs = batch[:, :-1].clamp(min=0)  # padding ids are only ever targets (ignored), never attended to
        with autocast_context(device, dtype):
            logits = model(inputs)
        nll = token_losses(logits, batch[:, 1:])  # (B, T) float32, 0 where the target is padding
        total_nats += float(nll.double().sum())
        total_tokens += int((batch[:, 1:] != -100).sum())
    loss = total_nats / total_tokens
    return {"loss": loss, "perplexity": perplexity(loss), "bits_per_byte": bits_per_byte(total_nats, total_bytes),
            "tokens": total_tokens, "bytes": total_bytes, "bits_per_token": loss / math.log(2)}
