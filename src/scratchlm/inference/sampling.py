"""Choosing the next token from logits (temperature, top-k, top-p), and plain generation by full recompute.

`generate` re-runs the whole (cropped) sequence for every new token: simple and obviously correct, the
reference that the KV-cache engine is tested against.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType

import torch
from torch import Tensor

from scratchlm import kernels
from scratchlm.model.layers import compute_dtype

# scratchlm.kernels.greedy once `load_kernels` found it: the next token and its log-probabilities in two kernels
# (CUDA, float32 or half logits; greedy rows or Gumbel-max at a temperature) instead of ~30 PyTorch kernels
_token_kernels: ModuleType | None = None
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_kernel_device_type = "cuda"  # where the kernels run (their tests force the CPU, under Triton's interpreter)


def load_kernels() -> None:
    """Import the token-picking kernels when there is a GPU and Triton imports. Called as an engine is built (an
    import inside a torch.compile'd decode step would break its graph)."""
    global _token_kernels
    if _token_kernels is None:
        _token_kernels = kernels.gpu_module("greedy")


def _kernels_for(logits: Tensor) -> ModuleType | None:
    """The token kernels if they take these logits, else None."""
    if _token_kernels is None or logits.device.type != _kernel_device_type or logits.dtype not in _KERNEL_DTYPES:
        return None
    return _token_kernels


def argmax_tokens(logits: Tensor) -> Tensor:
    """logits (rows, vocab) -> (rows,) argmax (lowest index on ties), by the token kernels where they run."""
    token_kernels = _kernels_for(logits)
    return logits.argmax(dim=-1) if token_kernels is None else token_kernels.greedy(logits)[0]


def check_sampling(temperature: float, top_k: int | None, top_p: float | None,
                   repetition_penalty: float = 1.0) -> None:
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {repetition_penalty}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")


def filtered_logits(logits: Tensor, temperature: float | Tensor = 1.0, top_k: int | Tensor | None = None,
                    top_p: float | Tensor | None = None) -> Tensor:
    """logits: (..., vocab) -> (..., vocab) divided by the temperature (> 0), with the tokens outside the top k
    and outside the nucleus set to -inf. Each setting is a number, or a tensor (..., 1) of per-row values (the
    engine batches requests with different settings; a row with top_k >= vocab or top_p >= 1 keeps every token).
    Top-p keeps the smallest prefix of the sorted distribution holding top_p of the mass (the top token always
    stays), computed after top-k. One sort serves both."""
    logits = logits / temperature
    if top_k is None and top_p is None:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (..., vocab)
    if top_k is not None:
        k = torch.as_tensor(top_k, device=logits.device).clamp(max=logits.shape[-1])
        kth = sorted_logits.gather(-1, k.expand(*logits.shape[:-1], 1) - 1)  # (..., 1); ties with it stay
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    if top_p is not None:
        probs = torch.softmax(sorted_logits, dim=-1)
        top_p = torch.as_tensor(top_p, dtype=probs.dtype, device=logits.device)
        # drop a token when the tokens strictly before it already hold top_p of the mass; top_p = 1 drops
        # nothing (the rounded sum before a tiny last token can reach 1.0)
        drop = (probs.cumsum(dim=-1) - probs >= top_p) & (top_p < 1)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def sampling_probs(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> Tensor:
    """logits: (..., vocab) -> float32 probabilities (..., vocab) after temperature, top-k and top-p: the
    distribution `sample_next` draws from (speculative decoding's rejection rule needs it whole).
    Temperature 0 gives the one-hot argmax."""
    check_sampling(temperature, top_k, top_p)
    logits = logits.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    return torch.softmax(filtered_logits(logits, temperature, top_k, top_p), dim=-1)


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float | Tensor) -> Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019, as in Hugging Face's RepetitionPenaltyLogitsProcessor):
    the logit of a token already in the sequence (prompt and generated) is divided by `penalty` when positive
    and multiplied by it when negative, so penalty > 1 always makes a repeat less likely. logits: (..., vocab),
    seen: (..., vocab) bool, penalty: a number or (..., 1) per row (1 = off)."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """logits: (batch, vocab) -> (batch,) token ids. temperature 0 means greedy (argmax)."""
    if temperature == 0:
        check_sampling(temperature, top_k, top_p)
        return logits.argmax(dim=-1)
    probs = sampling_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# -- seeded sampling for batches of independent requests -------------------------------------------------
# torch.multinomial draws every row from one generator, so a request's sample would depend on which other
# requests share its batch. The engine instead draws with the Gumbel-max trick from noise that is a pure
# function of (request seed, token position, token id): a counter-based generator (as in Philox/JAX), here
# the SplitMix64 finaliser on int64 tensors. No generator state, no host round trip, nothing that a CUDA
# graph cannot replay, and a request's tokens do not depend on its batch, its slot or the sync schedule.

_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)  # SplitMix64's constants as int64 (tensor arithmetic wraps mod 2^64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic: mask the sign copies away)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: Tensor) -> Tensor:
    """SplitMix64's finaliser (Steele et al. 2014), an invertible hash of int64 values, elementwise."""
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def seeded_uniform(seeds: Tensor, positions: Tensor, vocab_size: int) -> Tensor:
    """seeds, positions: (rows,) int64 -> (rows, vocab) float64 uniforms in (0, 1), one per (seed, position,
    token id), independent across all three."""
    key = mix64(mix64(seeds) + positions * _GOLDEN)  # (rows,)
    # key + token id, then two rounds of mixing: no int64 constant multiplies the token index directly, which
    # Inductor would emit as an out-of-range int32 literal times its int32 index variable (CUDA graphs path).
    token = torch.arange(vocab_size, device=seeds.device)
    bits = _shift_right(mix64(mix64(key[:, None] + token)), 11)  # (rows, vocab): 53 random bits
    return (bits.double() + 0.5) * 2.0**-53


def gumbel_noise(seeds: Tensor, positions: Tensor, vocab_size: int) -> Tensor:
    """seeds, positions: (rows,) int64 -> (rows, vocab) float64 standard Gumbel noise, a pure function of (seed,
    position, token id): argmax(log p + noise) is a draw from p (Gumbel-max)."""
    return -torch.log(-torch.log(seeded_uniform(seeds, positions, vocab_size)))


def gumbel_max(scores: Tensor, seeds: Tensor, positions: Tensor) -> Tensor:
    """scores (rows, vocab) float32, log-probabilities up to a constant per row (-inf: never drawn) -> (rows,)
    tokens drawn from softmax(scores) by Gumbel-max with the noise of (seeds, positions) (rows,) long. The
    token kernels (where they run) pick the same token as the PyTorch formula."""
    token_kernels = _kernels_for(scores)
    if token_kernels is None:
        return (scores.double() + gumbel_noise(seeds, positions, scores.shape[-1])).argmax(dim=-1)
    ones = torch.ones(scores.shape[0], dtype=torch.float32, device=scores.device)
    return token_kernels.sample(scores, ones, seeds, positions)[0]


def sample_batch(logits: Tensor, seen: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor, penalty: Tensor,
                 seeds: Tensor, positions: Tensor, *, filtered: bool = True, sampled: bool = True,
                 penalized: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """One token per row, each row with its own settings. logits: (rows, vocab) from the model, any float dtype
    (the arithmetic is in float32 or wider); seen: (rows, vocab) bool (tokens in the row's sequence so far);
    temperature, top_p, penalty: (rows, 1) float; top_k: (rows, 1) long; seeds, positions: (rows,) long,
    positions being those of the tokens drawn now. Temperature 0 is greedy. The flags skip work no row needs
    (the caller knows its rows' settings without asking the device): filtered=False skips the top-k/top-p
    sort, sampled=False the noise (all rows greedy), penalized=False the repetition penalty (all penalties 1).
    Without filters and penalties, on CUDA, two kernels do it all (scratchlm.kernels.greedy).

    Processing order: repetition penalty, then temperature, top-k, top-p (Hugging Face's order). Returns
    (tokens, model log-probabilities, sampling log-probabilities), each (rows,): the model log-probability is
    log_softmax of the raw logits at temperature 1 (what RL and OpenAI's `logprobs` want); the sampling one is
    the log-probability under the processed distribution the token was drawn from (0 for greedy rows)."""
    wide = compute_dtype(logits.dtype)
    token_kernels = _kernels_for(logits)
    if not filtered and not penalized and token_kernels is not None:
        if not sampled:
            tokens, logprobs = token_kernels.greedy(logits)
            return tokens, logprobs.to(wide), torch.zeros_like(logprobs, dtype=wide)
        tokens, logprobs, sampling_logprobs = token_kernels.sample(logits, temperature[:, 0].float(), seeds, positions)
        return tokens, logprobs.to(wide), sampling_logprobs.to(wide)
    logits = logits.to(wide)
    penalized_logits = apply_repetition_penalty(logits, seen, penalty) if penalized else logits
    model_logprobs = torch.log_softmax(logits, dim=-1)  # (rows, vocab)
    greedy_tokens = penalized_logits.argmax(dim=-1)  # (rows,)
    if not sampled:
        zeros = torch.zeros_like(model_logprobs[:, 0])
        return greedy_tokens, model_logprobs.gather(-1, greedy_tokens[:, None])[:, 0], zeros
    greedy = temperature == 0  # (rows, 1)
    processed = filtered_logits(penalized_logits, torch.where(greedy, 1.0, temperature),
                                top_k if filtered else None, top_p if filtered else None)
    drawn = (processed + gumbel_noise(seeds, positions, logits.shape[-1])).argmax(dim=-1)  # Gumbel-max: ~ p
    tokens = torch.where(greedy[:, 0], greedy_tokens, drawn)  # (rows,)
    sampling_logprob = torch.log_softmax(processed, dim=-1).gather(-1, tokens[:, None])[:, 0]
    model_logprob = model_logprobs.gather(-1, tokens[:, None])[:, 0]
    return tokens, model_logprob, torch.where(greedy[:, 0], 0.0, sampling_logprob)


@torch.no_grad()
def generate(model: torch.nn.Module, prompt: list[int], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_ids: Iterable[int] = (), repetition_penalty: float = 1.0) -> list[int]:
    """New token ids after `prompt` (not including it), stopping after a token in `stop_ids` (kept) or at
    max_new_tokens. The context is cropped to the model's last context_length tokens (the repetition penalty
    still sees the whole sequence)."""
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    check_sampling(temperature, top_k, top_p, repetition_penalty)
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
            if repetition_penalty != 1:
                seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, ids, True)
                logits = apply_repetition_penalty(logits, seen, repetition_penalty)
            token = sample_next(logits, temperature, top_k, top_p, generator)
            new.append(int(token))
            if new[-1] in stop:
                break
            ids = torch.cat((ids, token[:, None]), dim=1)
    finally:
        model.train(was_training)
    return new
