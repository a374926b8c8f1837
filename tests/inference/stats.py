"""Exact laws of the first generated tokens (by enumeration) and Pearson's chi-square test against them."""

from __future__ import annotations

import torch

from scratchlm.model import TransformerLM


@torch.no_grad()
def exact_two_token_law(model: TransformerLM, prompt: list[int], process=None) -> torch.Tensor:
    """(vocab * vocab,) float64 probabilities of the (first, second) generated tokens. `process(logits (rows,
    vocab), sequences (rows, len)) -> probabilities` turns the model's last logits into the sampling law."""
    vocab = model.config.vocab_size
    first_seq = torch.tensor([prompt])
    first = process(model(first_seq)[:, -1], first_seq)[0].double()  # (V,)
    continued = torch.tensor([prompt + [t] for t in range(vocab)])  # (V, len + 1)
    second = process(model(continued)[:, -1], continued).double()  # (V, V): row = first token
    return (first[:, None] * second).flatten()


def chi_square_p_value(outcomes: list[int], law: torch.Tensor) -> float:
    """Pearson's test of observed outcome indices against `law`; outcomes expected fewer than 5 times are
    pooled (the chi-square approximation needs that). An outcome of probability 0 that occurs rejects."""
    counts = torch.bincount(torch.tensor(outcomes), minlength=len(law)).double()
    if counts[law == 0].sum() > 0:
        return 0.0
    expected = law * len(outcomes)
    small = (expected < 5) & (law > 0)
    observed = torch.cat([counts[expected >= 5], counts[small].sum()[None]])
    expect = torch.cat([expected[expected >= 5], expected[small].sum()[None]])
    observed, expect = observed[expect > 0], expect[expect > 0]
    stat = ((observed - expect) ** 2 / expect).sum()
    df = len(expect) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2), stat / 2))
