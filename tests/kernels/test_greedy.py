"""The Triton greedy pick (each row's argmax and its log-probability) against torch.argmax and a float64
log_softmax: vocabularies of one and several chunks, ties within and across chunks (the lowest index wins),
a chunk of -inf logits; the engine's greedy decoding through it."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.common import DEVICE, TOLERANCES, require_triton
from tests.model.reference import assert_close_scaled

require_triton()

from scratchlm.kernels import greedy as gr  # noqa: E402


def check(logits: torch.Tensor) -> None:
    tokens, logprobs = gr.greedy(logits)
    assert tokens.dtype == torch.long and logprobs.dtype == torch.float32
    assert torch.equal(tokens, logits.float().argmax(dim=-1))
    expected = torch.log_softmax(logits.double(), dim=-1).gather(-1, tokens[:, None])[:, 0]
    assert_close_scaled(logprobs.double(), expected, "log-probabilities", **TOLERANCES[torch.float32])


@pytest.mark.parametrize(("rows", "vocab"), [(1, 50), (3, 2 * gr.BLOCK + 7), (2, gr.BLOCK)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_greedy_matches_argmax_and_log_softmax(rows, vocab, dtype):
    check((torch.randn(rows, vocab, dtype=torch.float64, device=DEVICE) * 4).to(dtype))


def test_ties_go_to_the_lowest_index_and_minus_inf_chunks_weigh_nothing():
    vocab = 3 * gr.BLOCK
    logits = torch.randn(3, vocab, device=DEVICE)
    logits[0, [gr.BLOCK + 5, 10, 2 * gr.BLOCK]] = 9.0  # across chunks: index 10
    logits[1, [gr.BLOCK + 9, gr.BLOCK + 3]] = 9.0  # within a chunk: gr.BLOCK + 3
    logits[2, :gr.BLOCK] = float("-inf")  # a whole chunk masked
    tokens, _ = gr.greedy(logits)
    assert tokens.tolist()[:2] == [10, gr.BLOCK + 3]
    check(logits)


def test_strided_rows_and_bad_inputs():
    wide = torch.randn(2, 300, device=DEVICE)
    check(wide[:, :200])  # rows with a stride: the kernel's row stride
    with pytest.raises(ValueError, match=r"\(rows, vocab\)"):
        gr.greedy(torch.randn(5, device=DEVICE))
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        gr.greedy(torch.randn(2, 5, device=DEVICE, dtype=torch.float64))
    torch.library.opcheck(torch.ops.scratchlm.greedy, (torch.randn(2, 70, device=DEVICE),))


def test_engine_decodes_greedily_through_the_kernel(monkeypatch):
    """The engine's all-greedy steps with the kernel (forced on here) give the tokens and log-probabilities of
    the PyTorch path; sampled steps keep the PyTorch path."""
    from scratchlm.inference import sampling
    from scratchlm.inference.engine import Engine, EngineConfig, SamplingParams
    from scratchlm.model import ModelConfig, TransformerLM

    calls = []

    def counted(logits):
        calls.append(logits.shape)
        return gr.greedy(logits)

    model = TransformerLM(ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=2, context_length=32),
                          device=DEVICE).eval()
    prompts, config = [[1, 2, 3], [4, 5]], EngineConfig(max_slots=2, sync_every=2)
    results = {}
    for name, kernel in (("torch", None), ("kernel", counted)):
        monkeypatch.setattr(sampling, "_greedy_kernel", kernel)
        monkeypatch.setattr(sampling, "_greedy_device_type", DEVICE.type)
        results[name] = Engine(model, config).generate(prompts, SamplingParams(max_tokens=5, temperature=0))
    assert calls, "the kernel was not used"
    for got, expected in zip(results["kernel"], results["torch"]):
        assert got.token_ids == expected.token_ids
        torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(expected.logprobs), rtol=1e-5, atol=1e-5)
    calls.clear()
    Engine(model, config).generate(prompts, SamplingParams(max_tokens=3, temperature=1.0, seed=0))
    assert not calls
