"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes k tokens,
the target scores them all in one forward pass, and a rejection rule keeps the output distributed exactly
as sampling from the target alone.

Decoding at batch 1 is bound by reading the weights, not by arithmetic: a target forward over k + 1
positions costs about as much as over one. Each round runs the draft k times (cheap) and the target once,
and commits between 1 and k + 1 tokens, so the target runs fewer times than there are tokens.

Rejected draft tokens need no cache rollback: a KVCache slot is a token position and attention masks keys
by position, so stale slots past the accepted prefix are invisible to every later query and are
overwritten by the next write at those positions. Each model only tracks how many committed tokens its
cache holds (`_Stream.fed`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from scratchlm.inference.kv_cache import KVCache
from scratchlm.inference.sampling import check_sampling, sampling_probs


@dataclass
class _Stream:
    """One model decoding the shared sequence: its cache holds the first `fed` committed tokens (slots at
    and past `fed` may hold rejected drafts; they are overwritten before any query can see them)."""

    model: nn.Module
    cache: KVCache
    fed: int = 0

    def feed(self, tokens: Tensor, start: int) -> Tensor:
        """tokens: (t,) written at positions start..start+t-1 -> logits (t, vocab)."""
        positions = torch.arange(start, start + tokens.shape[0], device=tokens.device)
        return self.model(tokens[None], positions, kv_cache=self.cache)[0]


def _propose(draft: _Stream, ids: Tensor, n: int, k: int, sampling: dict,
             generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """k draft tokens after the n committed ids, sampled one by one from the draft: (drafts (k,), q (k, vocab)).
    The first forward also feeds whatever committed tokens the draft has not seen yet; the last draft token
    is never fed (nothing needs the draft's prediction after it)."""
    logits = draft.feed(ids[draft.fed : n], draft.fed)[-1]  # (vocab,)
    tokens, dists = [], []
    for i in range(k):
        dists.append(sampling_probs(logits, **sampling))
        tokens.append(torch.multinomial(dists[-1], 1, generator=generator))  # (1,), stays on the device
        if i < k - 1:
            logits = draft.feed(tokens[-1], n + i)[-1]
    draft.fed = n + k - 1
    return torch.cat(tokens), torch.stack(dists)


def _verify(p: Tensor, q: Tensor, drafts: Tensor, generator: torch.Generator | None) -> tuple[int, int, list[int]]:
    """The rejection rule. p: (k+1, vocab) target, q: (k, vocab) draft, drafts: (k,).
    Accept draft i with probability min(1, p_i(x)/q_i(x)); at the first rejection j draw from
    norm(max(0, p_j - q_j)); with all k accepted draw the bonus token from p_k. Returns (accepted count j,
    the drawn token, the drafts) on the host, read back in a single device sync."""
    k = drafts.shape[0]
    rows = torch.arange(k, device=p.device)
    u = torch.rand(k, generator=generator, device=p.device)
    accepted = (u * q[rows, drafts] < p[rows, drafts]).long().cumprod(0).sum()  # (): length of the accepted run
    residual = (p[:k] - q).clamp(min=0)  # (k, vocab)
    # all-zero only when p_j == q_j up to rounding, where rejecting has probability ~0 anyway: draw from p_j then
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p[:k])
    fallback = torch.cat([residual, p[k:]])  # (k+1, vocab): row j is what to draw after accepting j drafts
    token = torch.multinomial(fallback[accepted], 1, generator=generator)  # (1,); multinomial normalises
    j, token_id, *draft_ids = torch.cat([accepted[None], token, drafts]).tolist()
    return j, token_id, draft_ids


def _check_models(target: nn.Module, draft: nn.Module, prompt_len: int, max_new_tokens: int, k: int) -> None:
    if prompt_len == 0:
        raise ValueError("the prompt must hold at least one token")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"target and draft vocabularies differ ({target.config.vocab_size} vs "
                         f"{draft.config.vocab_size} tokens): speculative decoding compares their distributions")
    for name, model in (("target", target), ("draft", draft)):
        if prompt_len + max_new_tokens > model.config.context_length:
            raise ValueError(f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the {name}'s "
                             f"context length {model.config.context_length}")


def _stats(rounds: int, proposed: int, accepted: int, draft_forwards: int, n_tokens: int) -> dict:
    return {"rounds": rounds, "proposed": proposed, "accepted": accepted,
            "acceptance_rate": accepted / proposed if proposed else 0.0,
            "target_forwards": rounds, "draft_forwards": draft_forwards,
            "tokens_per_target_forward": n_tokens / rounds if rounds else 0.0}


@torch.no_grad()
def speculative_generate(target: nn.Module, draft: nn.Module, prompt: list[int], max_new_tokens: int, *, k: int = 4,
                         temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                         seed: int | None = None, stop_ids: Iterable[int] = ()) -> tuple[list[int], dict]:
    """New tokens after `prompt` (batch 1), distributed exactly as `generate(target, ...)` with the same
    sampling settings, and statistics of the run. At temperature 0 both distributions are one-hot, so the
    rule accepts exactly while the draft token is the target's argmax and then draws that argmax: the output
    is the target's greedy output.

    Both models must be on one device. Each round proposes min(k, tokens still allowed - 1) drafts, so a
    round never commits more than max_new_tokens allows and nothing has to be thrown away at the end; the
    context therefore needs room for prompt + max_new_tokens only, as in `generate_batch`. Output stops
    after a token in `stop_ids` (kept). Stats: rounds (= target forwards), proposed and accepted draft
    tokens, acceptance_rate, draft_forwards, tokens_per_target_forward."""
    _check_models(target, draft, len(prompt), max_new_tokens, k)
    check_sampling(temperature, top_k, top_p)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    device = next(target.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    total = len(prompt) + max_new_tokens
    streams = [_Stream(m, KVCache(m.config, 1, total, device=device, dtype=next(m.parameters()).dtype))
               for m in (target, draft)]
    ids = torch.zeros(total, dtype=torch.long, device=device)  # (total,): committed tokens
    ids[: len(prompt)] = torch.tensor(prompt)
    modes = [(m, m.training) for m in (target, draft)]
    for m, _ in modes:
        m.eval()
    try:
        return _decode(*streams, ids, len(prompt), max_new_tokens, k, set(stop_ids), sampling, generator)
    finally:
        for m, was_training in modes:
            m.train(was_training)


def _decode(target: _Stream, draft: _Stream, ids: Tensor, n: int, max_new_tokens: int, k: int, stop: set[int],
            sampling: dict, generator: torch.Generator | None) -> tuple[list[int], dict]:
    """The round loop, starting from the n prompt ids. Between rounds the target's cache holds every committed
    token but the last one drawn (before the first round: none, its first forward takes the whole prompt) and
    the draft's at most as many; each forward first feeds what its model has not seen."""
    new: list[int] = []
    rounds = proposed = accepted = draft_forwards = 0
    while len(new) < max_new_tokens and not (new and new[-1] in stop):
        k_round = min(k, max_new_tokens - len(new) - 1)
        drafts = torch.zeros(0, dtype=torch.long, device=ids.device)
        q = torch.zeros(0, target.model.config.vocab_size, device=ids.device)
        if k_round:
            drafts, q = _propose(draft, ids, n, k_round, sampling, generator)  # (k_round,), (k_round, vocab)
            draft_forwards += k_round
        logits = target.feed(torch.cat([ids[target.fed : n], drafts]), target.fed)[-(k_round + 1):]
        j, token, draft_ids = _verify(sampling_probs(logits, **sampling), q, drafts, generator)
        committed = draft_ids[:j] + [token]
        ids[n : n + j + 1] = torch.tensor(committed)
        target.fed, draft.fed = n + j, min(draft.fed, n + j)  # the drawn token is fed next round
        n += j + 1
        rounds, proposed, accepted = rounds + 1, proposed + k_round, accepted + j
        for t in committed:
            new.append(t)
            if t in stop:
                break
    return new, _stats(rounds, proposed, accepted, draft_forwards, len(new))
