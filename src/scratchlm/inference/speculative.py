"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes k tokens,
the target scores them all in one forward pass, and a rejection rule keeps the output distributed exactly
as sampling from the target alone.

Decoding at batch 1 is bound by reading the weights, not by arithmetic: a target forward over k + 1
positions costs about as much as over one. Each round runs the draft k times (cheap) and the target once,
and commits between 1 and k + 1 tokens, so the target runs fewer times than there are tokens.

A round is device work of a fixed shape, so on CUDA it is one graph replay (scratchlm.inference.graphs):
- the committed tokens live in a device buffer and their count `p` in a device scalar;
- the draft re-feeds the last two committed tokens (positions p-2, p-1: rewriting a cache slot with the same
  token is harmless, and it covers both cases of the previous round, a rejection, where only the drawn token
  is new, and a full acceptance, where the last draft and the bonus token are), then proposes k tokens;
- the target feeds the last committed token and the k drafts (positions p-1 .. p+k-1);
- acceptance, the residual draw and the commit (tokens written at p .., p advanced) happen on the device,
  with counter-based noise (scratchlm.inference.sampling.seeded_uniform): no generator state in the graph.
  The draws are Gumbel-max in the token kernels (scratchlm.kernels.greedy: two kernels where PyTorch needs
  ~30 for the noise alone), the acceptance uniforms of the whole sequence are drawn before its first round,
  and at temperature 0 the rule reduces to comparing argmaxes, which is all that runs.
The host reads one small tensor per round (this round's tokens) for stop tokens and the length budget.

Rejected draft tokens need no cache rollback: a KVCache slot is a token position and attention masks keys
by position, so stale slots past the accepted prefix are invisible to every later query and are
overwritten by the next write at those positions.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from scratchlm.inference.graphs import GraphCache, compiled
from scratchlm.inference.kv_cache import KVCache
from scratchlm.inference.sampling import (
    argmax_tokens,
    check_sampling,
    gumbel_max,
    load_kernels,
    mix64,
    sampling_probs,
    seeded_uniform,
)
from scratchlm.inference.tuning import tune_gemv_tiles

FEED = 2  # committed tokens the draft re-feeds each round


def _check_pair(target: nn.Module, draft: nn.Module, k: int, max_len: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"target and draft vocabularies differ ({target.config.vocab_size} vs "
                         f"{draft.config.vocab_size} tokens): speculative decoding compares their distributions")
    for name, model in (("target", target), ("draft", draft)):
        if max_len > model.config.context_length:
            raise ValueError(f"prompt + max_new_tokens ({max_len} positions) exceeds the {name}'s context length "
                             f"{model.config.context_length}")


class SpeculativeDecoder:
    """Batch-1 speculative decoding of `target` with `draft`, for sequences of up to `max_len` tokens (prompt
    + new). Holds the caches and, on CUDA, the round graphs, so repeated `generate` calls reuse them."""

    def __init__(self, target: nn.Module, draft: nn.Module, max_len: int, *, k: int = 4, cuda_graphs: bool = True,
                 compile: bool = False):
        """compile (CUDA): torch.compile each round shape first (fused kernels; a compilation per (k, feed,
        sampling settings), then replayed as graphs like the eager rounds)."""
        _check_pair(target, draft, k, max_len)
        self.target, self.draft, self.k, self.max_len = target.eval(), draft.eval(), k, max_len
        param = next(target.parameters())
        self.device = device = param.device
        # room for a whole round of k drafts after the last token allowed (see `generate`), within the context
        self.slots = min(max_len + k, target.config.context_length, draft.config.context_length)
        self.target_cache, self.draft_cache = (KVCache(m.config, 1, self.slots, device=device,
                                                       dtype=next(m.parameters()).dtype) for m in (target, draft))
        self.ids = torch.zeros(self.slots + 1, dtype=torch.long, device=device)  # committed tokens (+ a round's)
        self.p = torch.zeros(1, dtype=torch.long, device=device)  # how many
        self.accepted = torch.zeros(1, dtype=torch.long, device=device)  # drafts accepted by the last round
        self.seeds = torch.zeros(3, dtype=torch.long, device=device)  # draft samples, acceptance, target draws
        self.offsets = torch.arange(k + 1, device=device)
        self.uniforms = torch.zeros(self.slots, dtype=torch.float64, device=device)  # acceptance draw per position
        self._graphs = GraphCache(device, cuda_graphs)
        load_kernels()  # before compiling: the token kernels draw and pick the tokens
        tune_gemv_tiles(draft, max_len=min(max_len, 1024))  # the draft decodes one row at a time
        self._run_round = compiled(self._round, device, compile)

    @torch.no_grad()
    def generate(self, prompt: list[int], max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, stop_ids: Iterable[int] = ()
                 ) -> tuple[list[int], dict]:
        """See `speculative_generate`."""
        if not prompt:
            raise ValueError("the prompt must hold at least one token")
        if len(prompt) + max_new_tokens > self.max_len:
            raise ValueError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) exceeds this "
                             f"decoder's {self.max_len} positions")
        check_sampling(temperature, top_k, top_p)
        sampling = (temperature, top_k, top_p)
        seed = seed if seed is not None else int(torch.randint(0, 2**62, ()))
        self.seeds.copy_(mix64(mix64(torch.tensor(seed)) + torch.arange(3)))
        if temperature > 0:  # all of this sequence's acceptance uniforms at once: the rounds just gather them
            positions = torch.arange(self.slots, device=self.device)
            self.uniforms.copy_(seeded_uniform(self.seeds[1].expand(self.slots), positions, 1)[:, 0])
        n = len(prompt)
        self.ids[:n] = torch.tensor(prompt)
        self.p.fill_(n)
        self._prefill(self.target, self.target_cache, prompt[:-1])  # the round feeds the last prompt token
        self._prefill(self.draft, self.draft_cache, prompt[:-FEED])  # ... and the draft the last two
        new, stop = [], set(stop_ids)
        rounds = proposed = accepted = drafted = 0
        while len(new) < max_new_tokens and not (new and new[-1] in stop):
            # Every round proposes k drafts, also the last one, which keeps the tokens the budget allows: any
            # prefix of a round's output is distributed as the target's, and one round shape (one graph, one
            # compilation) serves the whole sequence. Only at the end of the context are there fewer drafts.
            k = min(self.k, self.slots - n)
            feed = min(FEED, n)
            self._graphs.run((k, feed, sampling), lambda k=k, feed=feed: self._run_round(k, feed, sampling))
            j, *out = torch.cat([self.accepted, self.ids[n : n + k + 1]]).tolist()  # the round's one sync
            allowed = max_new_tokens - len(new)
            committed = out[: min(j + 1, allowed)]
            n += j + 1  # as p on the device (past the budget only when this was the last round)
            rounds, proposed, accepted = rounds + 1, proposed + min(k, allowed - 1), accepted + len(committed) - 1
            drafted += k
            for t in committed:
                new.append(t)
                if t in stop:
                    break
        return new, _stats(rounds, proposed, accepted, drafted, len(new))

    def _prefill(self, model: nn.Module, cache: KVCache, tokens: list[int]) -> None:
        if tokens:
            positions = torch.arange(len(tokens), device=self.device)
            model(torch.tensor([tokens], device=self.device), positions, kv_cache=cache, logits=False)

    def _round(self, k: int, feed: int, sampling: tuple[float, int | None, float | None]) -> None:
        """Propose k drafts, verify them, commit j accepted drafts + 1 target token at p, advance p; device
        work only, shapes fixed by (k, feed). k = 0: one plain target step."""
        p, offsets = self.p, self.offsets
        drafts, draft_probs = self._propose(k, feed, sampling)
        positions = p - 1 + offsets[: k + 1]
        target_in = torch.cat([self.ids[p - 1], drafts])[None]  # (1, k + 1)
        target_logits = self.target(target_in, positions, kv_cache=self.target_cache)[0]  # (k + 1, vocab)
        if sampling[0] == 0:
            j, token = _verify_greedy(drafts, target_logits)
        else:
            j, token = self._verify_sampled(drafts, draft_probs, sampling_probs(target_logits, *sampling))
        # positions p .. p+k: the accepted drafts, then the drawn token (what follows is overwritten later)
        self.ids[p + offsets[: k + 1]] = torch.where(offsets[: k + 1] < j, torch.cat([drafts, token]), token)
        self.accepted.copy_(j.reshape(1))
        self.p.add_(j + 1)

    def _propose(self, k: int, feed: int, sampling: tuple[float, int | None, float | None]
                 ) -> tuple[Tensor, Tensor | None]:
        """k draft tokens (k,) after the committed ones and, when sampling, the distributions they were drawn
        from (k, vocab) float32 (None when greedy: the verification needs only the tokens)."""
        p, greedy = self.p, sampling[0] == 0
        tokens: list[Tensor] = []
        probs: list[Tensor] = []
        if not k:
            return torch.zeros(0, dtype=torch.long, device=self.device), None
        positions = p - feed + self.offsets[:feed]
        logits = self.draft(self.ids[positions][None], positions, kv_cache=self.draft_cache)[0, -1:]  # (1, vocab)
        for i in range(k):
            if greedy:
                tokens.append(argmax_tokens(logits))
            else:
                probs.append(sampling_probs(logits, *sampling))  # (1, vocab)
                tokens.append(gumbel_max(probs[-1].log(), self.seeds[:1], p + i))  # (1,)
            if i < k - 1:  # the last draft is never fed: nothing needs the draft's prediction after it
                logits = self.draft(tokens[-1][None], p + i, kv_cache=self.draft_cache)[0]
        return torch.cat(tokens), None if greedy else torch.cat(probs)

    def _verify_sampled(self, drafts: Tensor, draft_probs: Tensor | None, target_probs: Tensor) -> tuple[Tensor, Tensor]:
        """(j, the token after them (1,)): draft i is accepted with probability min(1, p_i(x) / q_i(x)), j is the
        length of the accepted run, and the token is drawn from the residual max(p_j - q_j, 0) (from p_k after
        accepting all k). target_probs: (k + 1, vocab)."""
        k, p = drafts.shape[0], self.p
        padded = torch.zeros_like(target_probs[:1])  # row k: nothing to subtract
        j = torch.zeros((), dtype=torch.long, device=self.device)
        if k:
            rows = self.offsets[:k]
            u = self.uniforms.index_select(0, p + rows)  # (k,)
            j = (u * draft_probs[rows, drafts] < target_probs[rows, drafts]).long().cumprod(0).sum()
            padded = torch.cat([draft_probs, padded])
        # row j by index_select: indexing with a 0-dim tensor would read it on the host (no graph capture)
        target_row = target_probs.index_select(0, j.reshape(1))  # (1, vocab)
        residual = (target_row - padded.index_select(0, j.reshape(1))).clamp(min=0)
        # all-zero only when p == q up to rounding, where rejecting has probability ~0 anyway: draw from p
        residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, target_row)
        return j, gumbel_max(residual.log(), self.seeds[2:], p + j)  # Gumbel-max needs no normalising


def _verify_greedy(drafts: Tensor, target_logits: Tensor) -> tuple[Tensor, Tensor]:
    """(j, the token after them (1,)) at temperature 0, where the sampled rule reduces to: accept while the
    draft is the target's argmax, then take the target's argmax."""
    best = argmax_tokens(target_logits)  # (k + 1,)
    j = (drafts == best[: drafts.shape[0]]).long().cumprod(0).sum()
    return j, best.index_select(0, j.reshape(1))


def expected_tokens_per_round(acceptance: float, k: int) -> float:
    """Tokens a round of k drafts commits on average when each draft is accepted with probability `acceptance`
    independently of the others (Leviathan et al. 2023, eq. 1): the accepted run plus one target token,
    (1 - a^(k+1)) / (1 - a)."""
    if not 0 <= acceptance <= 1:
        raise ValueError(f"acceptance must be in [0, 1], got {acceptance}")
    return float(k + 1) if acceptance == 1 else (1 - acceptance ** (k + 1)) / (1 - acceptance)


def acceptance_for_speedup(speedup: float, k: int, round_cost: float) -> float | None:
    """The acceptance rate at which rounds of k drafts, each costing `round_cost` plain decode steps of the
    target (measured: a round's shapes, hence its time, do not depend on what is accepted), decode `speedup`
    times as fast as the target alone; None when even accepting every draft falls short. Solves
    expected_tokens_per_round(a, k) = speedup * round_cost for a (increasing in a) by bisection."""
    needed = speedup * round_cost
    if needed <= 1:
        return 0.0
    if needed > k + 1:
        return None
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if expected_tokens_per_round(middle, k) < needed else (low, middle)
    return high


def _stats(rounds: int, proposed: int, accepted: int, draft_forwards: int, n_tokens: int) -> dict:
    return {"rounds": rounds, "proposed": proposed, "accepted": accepted,
            "acceptance_rate": accepted / proposed if proposed else 0.0,
            "target_forwards": rounds, "draft_forwards": draft_forwards,
            "tokens_per_target_forward": n_tokens / rounds if rounds else 0.0}


def speculative_generate(target: nn.Module, draft: nn.Module, prompt: list[int], max_new_tokens: int, *, k: int = 4,
                         temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                         seed: int | None = None, stop_ids: Iterable[int] = ()) -> tuple[list[int], dict]:
    """New tokens after `prompt` (batch 1), distributed exactly as `generate(target, ...)` with the same
    sampling settings, and statistics of the run. At temperature 0 both distributions are one-hot, so the
    rule accepts exactly while the draft token is the target's argmax and then draws that argmax: the output
    is the target's greedy output.

    Both models must be on one device. Every round proposes k drafts (fewer only where the context ends: it
    needs room for prompt + max_new_tokens only) and the last one keeps what max_new_tokens allows. Output
    stops after a token in `stop_ids` (kept). Stats: rounds (= target forwards), proposed and accepted draft
    tokens within the budget (a last round counts the drafts it could keep), acceptance_rate, draft_forwards,
    tokens_per_target_forward. A `SpeculativeDecoder` does the work; keep one to reuse its
    caches and CUDA graphs across calls."""
    decoder = SpeculativeDecoder(target, draft, len(prompt) + max_new_tokens, k=k)
    return decoder.generate(prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                            stop_ids=stop_ids)
