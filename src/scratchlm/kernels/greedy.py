"""A decode step's last step in Triton: each row's next token, its argmax (greedy) or a Gumbel-max draw at the
row's temperature, and its log-probabilities.

A decode step ends with one pass over the logits of each row. As PyTorch operations that is a float32 copy, a
log_softmax, an argmax and a gather: four kernels in a CUDA graph, and in a compiled step one reduction that
Inductor runs on a single SM (13 us a token on an H100 for GPT-2's 50k-token vocabulary, next to a 300 us step).
Here the vocabulary is cut into chunks of BLOCK tokens: a program per (row, chunk) writes the chunk's max, its
first index and sum(exp(x - max)); a second kernel per row takes the first chunk holding the row's max and
adds the sums up, rescaled to that max: the token's log-probability is max - logsumexp = -log(sum). Ties go to
the lowest index, as `torch.argmax`. Both kernels use programmatic dependent launch (`kernels.pdl_options`).

Sampled rows (`sample`) are the same reduction over scores x / t + g, g the Gumbel noise of
`scratchlm.inference.sampling.gumbel_noise` (SplitMix64 of (seed, position, token id), float64), which picks a
draw from softmax(x / t): as PyTorch operations the noise alone is ~25 elementwise kernels over the vocabulary
(~140 us a token in a CUDA graph, more than half of a 124M model's decode step). The chunks also keep max and
sum(exp) of x / t, for the log-probability under the distribution the token was drawn from.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from scratchlm import kernels

INTERPRETED = bool(triton.knobs.runtime.interpret)

BLOCK = 2048  # vocabulary entries a program reduces


# SplitMix64 (scratchlm.inference.sampling.mix64): the same hash, so a seeded draw is the same token here as there
_GOLDEN = tl.constexpr(0x9E3779B97F4A7C15)
_MIX1 = tl.constexpr(0xBF58476D1CE4E5B9)
_MIX2 = tl.constexpr(0x94D049BB133111EB)


@triton.jit
def _mix64(x):
    """SplitMix64's finaliser on uint64 (wrapping arithmetic, logical shifts)."""
    x = (x ^ (x >> 30)) * tl.full(x.shape, _MIX1, tl.uint64)
    x = (x ^ (x >> 27)) * tl.full(x.shape, _MIX2, tl.uint64)
    return x ^ (x >> 31)


@triton.jit
def _scores(x, offs, row, T, SEED, POS, NOISE: tl.constexpr):
    """(what the token is picked by: x (greedy) or x / t + Gumbel noise in float64 (a row at temperature t > 0,
    Gumbel-max: a draw from softmax(x / t)), x / t) for one chunk of a row's float32 logits."""
    score = x
    processed = x
    if NOISE:  # (no early return above: Triton would still type-check what follows it)
        t = tl.load(T + row)
        processed = x / tl.where(t > 0, t, 1.0)
        seed = tl.load(SEED + row).to(tl.uint64, bitcast=True)
        position = tl.load(POS + row).to(tl.uint64, bitcast=True)
        key = _mix64(_mix64(seed) + position * tl.full((), _GOLDEN, tl.uint64))
        bits = _mix64(_mix64(key + offs.to(tl.uint64))) >> 11  # 53 random bits per (seed, position, token id)
        uniform = (bits.to(tl.float64) + 0.5) * 1.1102230246251565e-16  # 2^-53: in (0, 1)
        noisy = processed.to(tl.float64) - tl.log(-tl.log(uniform))
        score = tl.where(t > 0, noisy, x.to(tl.float64))
    return score, processed


@triton.jit
def _chunk_kernel(X, T, SEED, POS, SCORE, ARG, MAX, SUM, PMAX, PSUM, vocab, stride_xr, NOISE: tl.constexpr,
                  PDL: tl.constexpr, BLOCK: tl.constexpr):
    """Per (row, chunk): the best score and its first index; max and sum(exp(x - max)) of the logits, and
    (NOISE) of the tempered logits x / t."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    if PDL:
        tl.extra.cuda.gdc_wait()  # the logits come from the kernel before
        tl.extra.cuda.gdc_launch_dependents()
    x = tl.load(X + row * stride_xr + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
    score, processed = _scores(x, offs, row, T, SEED, POS, NOISE)
    part = row * tl.num_programs(1) + chunk
    tl.store(SCORE + part, tl.max(score, axis=0))
    tl.store(ARG + part, chunk * BLOCK + tl.argmax(score, axis=0, tie_break_left=True))
    _store_max_and_sum(x, MAX + part, SUM + part)
    if NOISE:
        _store_max_and_sum(processed, PMAX + part, PSUM + part)


@triton.jit
def _store_max_and_sum(values, M, S):
    best = tl.max(values, axis=0)
    finite = tl.where(best == float("-inf"), 0.0, best)  # a chunk of -inf logits sums to 0, not NaN
    tl.store(M, best)
    tl.store(S, tl.sum(tl.exp(values - finite), axis=0))


@triton.jit
def _log_softmax_at(value, M, S, chunks, present):
    """log_softmax at one value of a row from its chunks' maxima and sums: value - logsumexp."""
    maxima = tl.load(M + chunks, mask=present, other=float("-inf"))
    sums = tl.load(S + chunks, mask=present, other=0.0)
    best = tl.max(maxima, axis=0)
    return value - best - tl.log(tl.sum(sums * tl.exp(maxima - best), axis=0))


@triton.jit
def _combine_kernel(X, T, SCORE, ARG, MAX, SUM, PMAX, PSUM, TOKENS, LOGPROBS, SAMPLING_LOGPROBS, n_chunks,
                    stride_xr, NOISE: tl.constexpr, PDL: tl.constexpr, BLOCK_CHUNKS: tl.constexpr):
    """Per row: the token of the first chunk holding the best score (the lowest index on ties, as argmax), its
    log_softmax under the logits and (NOISE, rows at t > 0) under the tempered logits."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_CHUNKS)
    present = offs < n_chunks
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    chunks = row * n_chunks + offs
    scores = tl.load(SCORE + chunks, mask=present, other=float("-inf"))
    token = tl.load(ARG + row * n_chunks + tl.argmax(scores, axis=0, tie_break_left=True)).to(tl.int64)
    x = tl.load(X + row * stride_xr + token).to(tl.float32)
    tl.store(TOKENS + row, token)
    tl.store(LOGPROBS + row, _log_softmax_at(x, MAX, SUM, chunks, present))
    if NOISE:
        t = tl.load(T + row)
        sampling = _log_softmax_at(x / tl.where(t > 0, t, 1.0), PMAX, PSUM, chunks, present)
        tl.store(SAMPLING_LOGPROBS + row, tl.where(t > 0, sampling, 0.0))


def launch(logits: Tensor, temperature: Tensor | None = None, seeds: Tensor | None = None,
           positions: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    rows, vocab = logits.shape
    n_chunks = triton.cdiv(vocab, BLOCK)
    device, noise = logits.device, temperature is not None
    scores = kernels.output_buffer((rows, n_chunks), torch.float64 if noise else torch.float32, device)
    maxima, sums, pmaxima, psums = (kernels.output_buffer((rows, n_chunks), torch.float32, device)
                                    for _ in range(4))
    arguments = kernels.output_buffer((rows, n_chunks), torch.int32, device)
    tokens = kernels.output_buffer((rows,), torch.long, device)
    logprobs = kernels.output_buffer((rows,), torch.float32, device)
    sampling_logprobs = (kernels.output_buffer((rows,), torch.float32, device) if noise
                         else torch.zeros(rows, dtype=torch.float32, device=device))
    t, seeds, positions = (temperature, seeds, positions) if noise else (logits, logits, logits)  # not read
    pdl = kernels.pdl_options(logits)
    _chunk_kernel[(rows, n_chunks)](logits, t, seeds, positions, scores, arguments, maxima, sums, pmaxima, psums,
                                    vocab, logits.stride(0), NOISE=noise, PDL=bool(pdl), BLOCK=BLOCK, num_warps=4,
                                    **pdl)
    _combine_kernel[(rows,)](logits, t, scores, arguments, maxima, sums, pmaxima, psums, tokens, logprobs,
                             sampling_logprobs, n_chunks, logits.stride(0), NOISE=noise, PDL=bool(pdl),
                             BLOCK_CHUNKS=triton.next_power_of_2(n_chunks), num_warps=1, **pdl)
    return tokens, logprobs, sampling_logprobs


@torch.library.custom_op("scratchlm::greedy", mutates_args=())
def _greedy_op(logits: Tensor) -> tuple[Tensor, Tensor]:
    tokens, logprobs, _ = launch(logits)
    return tokens, logprobs


@_greedy_op.register_fake
def _(logits: Tensor) -> tuple[Tensor, Tensor]:
    rows = logits.shape[0]
    return logits.new_empty((rows,), dtype=torch.long), logits.new_empty((rows,), dtype=torch.float32)


@torch.library.custom_op("scratchlm::sample", mutates_args=())
def _sample_op(logits: Tensor, temperature: Tensor, seeds: Tensor, positions: Tensor
               ) -> tuple[Tensor, Tensor, Tensor]:
    return launch(logits, temperature, seeds, positions)


@_sample_op.register_fake
def _(logits: Tensor, temperature: Tensor, seeds: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    rows = logits.shape[0]
    return (logits.new_empty((rows,), dtype=torch.long), logits.new_empty((rows,), dtype=torch.float32),
            logits.new_empty((rows,), dtype=torch.float32))


def _check_logits(logits: Tensor, *others: Tensor) -> Tensor:
    kernels.check_device(INTERPRETED, logits, *others)
    kernels.check_dtype("logits", logits.dtype)
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must be (rows, vocab), got {tuple(logits.shape)}")
    return logits if logits.stride(1) == 1 else logits.contiguous()


def greedy(logits: Tensor) -> tuple[Tensor, Tensor]:
    """logits (rows, vocab), any float dtype -> (tokens (rows,) long: each row's argmax, lowest index on ties;
    log-probabilities (rows,) float32: log_softmax of the row, computed in float32, at that token)."""
    return _greedy_op(_check_logits(logits))


def sample(logits: Tensor, temperature: Tensor, seeds: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One token per row of logits (rows, vocab), drawn from softmax(logits / t) by Gumbel-max with the noise of
    `scratchlm.inference.sampling.gumbel_noise(seeds, positions)` (the same token as there); rows at t = 0 take
    their argmax. temperature: (rows,) float32 >= 0; seeds, positions: (rows,) long. Returns (tokens (rows,)
    long, log_softmax of the logits at them, log_softmax of logits / t at them (0 where t = 0)), float32."""
    rows = logits.shape[0] if logits.dim() == 2 else -1
    if (temperature.shape != (rows,) or temperature.dtype != torch.float32 or seeds.shape != (rows,)
            or positions.shape != (rows,) or seeds.dtype != torch.long or positions.dtype != torch.long):
        raise ValueError(f"temperature (float32), seeds and positions (long) must be ({rows},), got "
                         f"{tuple(temperature.shape)} {temperature.dtype}, {tuple(seeds.shape)} {seeds.dtype}, "
                         f"{tuple(positions.shape)} {positions.dtype}")
    return _sample_op(_check_logits(logits, temperature, seeds, positions), temperature.contiguous(),
                      seeds.contiguous(), positions.contiguous())
