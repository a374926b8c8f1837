"""Greedy decoding's last step in Triton: each row's argmax token and its log-probability, log_softmax of the
row at that token.

A decode step ends with one pass over the logits of each row. As PyTorch operations that is a float32 copy, a
log_softmax, an argmax and a gather: four kernels in a CUDA graph, and in a compiled step one reduction that
Inductor runs on a single SM (13 us a token on an H100 for GPT-2's 50k-token vocabulary, next to a 300 us step).
Here the vocabulary is cut into chunks of BLOCK tokens: a program per (row, chunk) writes the chunk's max, its
first index and sum(exp(x - max)); a second kernel per row takes the first chunk holding the row's max and
adds the sums up, rescaled to that max: the token's log-probability is max - logsumexp = -log(sum). Ties go to
the lowest index, as `torch.argmax`. Both kernels use programmatic dependent launch (`kernels.pdl_options`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from scratchlm import kernels

INTERPRETED = bool(triton.knobs.runtime.interpret)

BLOCK = 2048  # vocabulary entries a program reduces


@triton.jit
def _chunk_kernel(X, MAX, ARG, SUM, vocab, stride_xr, PDL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    if PDL:
        tl.extra.cuda.gdc_wait()  # the logits come from the kernel before
        tl.extra.cuda.gdc_launch_dependents()
    x = tl.load(X + row * stride_xr + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
    best = tl.max(x, axis=0)
    finite = tl.where(best == float("-inf"), 0.0, best)  # a chunk of -inf logits sums to 0, not NaN
    part = row * tl.num_programs(1) + chunk
    tl.store(MAX + part, best)
    tl.store(ARG + part, chunk * BLOCK + tl.argmax(x, axis=0, tie_break_left=True))
    tl.store(SUM + part, tl.sum(tl.exp(x - finite), axis=0))


@triton.jit
def _combine_kernel(MAX, ARG, SUM, TOKENS, LOGPROBS, n_chunks, PDL: tl.constexpr, BLOCK_CHUNKS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_CHUNKS)
    present = offs < n_chunks
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    maxima = tl.load(MAX + row * n_chunks + offs, mask=present, other=float("-inf"))  # (BLOCK_CHUNKS,)
    sums = tl.load(SUM + row * n_chunks + offs, mask=present, other=0.0)
    best = tl.max(maxima, axis=0)
    first = tl.argmax(maxima, axis=0, tie_break_left=True)  # the first chunk holding the max: the lowest index
    total = tl.sum(sums * tl.exp(maxima - best), axis=0)  # sum over the row of exp(x - best)
    tl.store(TOKENS + row, tl.load(ARG + row * n_chunks + first).to(tl.int64))
    tl.store(LOGPROBS + row, -tl.log(total))


def launch(logits: Tensor) -> tuple[Tensor, Tensor]:
    rows, vocab = logits.shape
    n_chunks = triton.cdiv(vocab, BLOCK)
    maxima, sums = (kernels.output_buffer((rows, n_chunks), torch.float32, logits.device) for _ in range(2))
    arguments = kernels.output_buffer((rows, n_chunks), torch.int32, logits.device)
    tokens = kernels.output_buffer((rows,), torch.long, logits.device)
    logprobs = kernels.output_buffer((rows,), torch.float32, logits.device)
    pdl = kernels.pdl_options(logits)
    _chunk_kernel[(rows, n_chunks)](logits, maxima, arguments, sums, vocab, logits.stride(0), PDL=bool(pdl),
                                    BLOCK=BLOCK, num_warps=4, **pdl)
    _combine_kernel[(rows,)](maxima, arguments, sums, tokens, logprobs, n_chunks, PDL=bool(pdl),
                             BLOCK_CHUNKS=triton.next_power_of_2(n_chunks), num_warps=1, **pdl)
    return tokens, logprobs


@torch.library.custom_op("scratchlm::greedy", mutates_args=())
def _greedy_op(logits: Tensor) -> tuple[Tensor, Tensor]:
    return launch(logits)


@_greedy_op.register_fake
def _(logits: Tensor) -> tuple[Tensor, Tensor]:
    rows = logits.shape[0]
    return logits.new_empty((rows,), dtype=torch.long), logits.new_empty((rows,), dtype=torch.float32)


def greedy(logits: Tensor) -> tuple[Tensor, Tensor]:
    """logits (rows, vocab), any float dtype -> (tokens (rows,) long: each row's argmax, lowest index on ties;
    log-probabilities (rows,) float32: log_softmax of the row, computed in float32, at that token)."""
    kernels.check_device(INTERPRETED, logits)
    kernels.check_dtype("logits", logits.dtype)
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must be (rows, vocab), got {tuple(logits.shape)}")
    return _greedy_op(logits if logits.stride(1) == 1 else logits.contiguous())
