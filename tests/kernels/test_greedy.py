"""The Triton token pick against PyTorch: greedy (each row's argmax and its log-probability) against
torch.argmax and a float64 log_softmax, on vocabularies of one and several chunks, ties within and across
chunks (the lowest index wins), a chunk of -inf logits; sampling (Gumbel-max at each row's temperature)
against the PyTorch draw with the same noise (`inference.sampling.gumbel_noise`) and float64 log-probabilities;
the engine's greedy and sampled decoding through them."""

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


@pytest.mark.parametrize(("rows", "vocab"), [(5, 70), (4, 2 * gr.BLOCK + 7)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_sampling_draws_the_pytorch_token_with_its_log_probabilities(rows, vocab, dtype):
    """Each row's token is the PyTorch Gumbel-max draw with the same noise (rows at t = 0: the argmax); its
    log-probabilities under the logits and under logits / t (0 at t = 0) match float64."""
    from scratchlm.inference.sampling import gumbel_noise

    logits = (torch.randn(rows, vocab, dtype=torch.float64, device=DEVICE) * 3).to(dtype)
    temperature = torch.tensor([1.0, 0.0, 0.7, 2.5, 0.05][:rows], device=DEVICE)
    seeds = torch.randint(-2**62, 2**62, (rows,), device=DEVICE)  # negative seeds too: int64 bits
    positions = torch.randint(0, 4000, (rows,), device=DEVICE)
    tokens, logprobs, sampling_logprobs = gr.sample(logits, temperature, seeds, positions)

    tempered = logits.float() / torch.where(temperature > 0, temperature, 1.0)[:, None]
    drawn = (tempered.double() + gumbel_noise(seeds, positions, vocab)).argmax(dim=-1)
    expected = torch.where(temperature > 0, drawn, logits.float().argmax(dim=-1))
    assert tokens.dtype == torch.long and torch.equal(tokens, expected)
    at = expected[:, None]
    assert_close_scaled(logprobs.double(), torch.log_softmax(logits.double(), -1).gather(-1, at)[:, 0],
                        "log-probabilities", **TOLERANCES[torch.float32])
    sampled = torch.where(temperature > 0, torch.log_softmax(tempered.double(), -1).gather(-1, at)[:, 0], 0.0)
    assert_close_scaled(sampling_logprobs.double(), sampled, "sampling log-probabilities", **TOLERANCES[torch.float32])


def test_sampling_arguments_are_checked():
    logits, longs = torch.randn(2, 70, device=DEVICE), torch.zeros(2, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="must be \\(2,\\)"):
        gr.sample(logits, torch.ones(3, device=DEVICE), longs, longs)
    with pytest.raises(ValueError, match="must be \\(2,\\)"):
        gr.sample(logits, torch.ones(2, device=DEVICE), longs.float(), longs)
    torch.library.opcheck(torch.ops.scratchlm.sample, (logits, torch.ones(2, device=DEVICE), longs + 3, longs + 1))


class CountedKernels:
    """The token kernels, each call recorded (by name): what `inference.sampling` uses when forced on."""

    def __init__(self):
        self.calls = []

    def greedy(self, logits):
        self.calls.append("greedy")
        return gr.greedy(logits)

    def sample(self, *args):
        self.calls.append("sample")
        return gr.sample(*args)


@pytest.mark.parametrize("temperature", [0.0, 0.8], ids=lambda t: f"T={t}")
def test_engine_decodes_through_the_kernels(monkeypatch, temperature):
    """The engine's greedy and sampled (seeded, unfiltered) steps with the kernels (forced on here) give the
    tokens and log-probabilities of the PyTorch path; steps with top-k keep the PyTorch path."""
    from scratchlm.inference import sampling
    from scratchlm.inference.engine import Engine, EngineConfig, SamplingParams
    from scratchlm.model import ModelConfig, TransformerLM

    counted = CountedKernels()
    model = TransformerLM(ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=2, context_length=32),
                          device=DEVICE).eval()
    prompts, config = [[1, 2, 3], [4, 5]], EngineConfig(max_slots=2, sync_every=2)
    params = SamplingParams(max_tokens=5, temperature=temperature, seed=3)
    results = {}
    for name, kernels in (("torch", None), ("kernel", counted)):
        monkeypatch.setattr(sampling, "_token_kernels", kernels)
        monkeypatch.setattr(sampling, "_kernel_device_type", DEVICE.type)
        results[name] = Engine(model, config).generate(prompts, params)
    assert set(counted.calls) == {"greedy" if temperature == 0 else "sample"}, counted.calls
    for got, expected in zip(results["kernel"], results["torch"]):
        assert got.token_ids == expected.token_ids
        for a, b in ((got.logprobs, expected.logprobs), (got.sampling_logprobs, expected.sampling_logprobs)):
            torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-5)
    counted.calls.clear()
    Engine(model, config).generate(prompts, SamplingParams(max_tokens=3, temperature=1.0, top_k=5, seed=0))
    assert not counted.calls


def test_our_ops_are_registered_with_inductor_before_compiling():
    """`kernels.register_compile_fallbacks` (what `inference.graphs.compiled` calls) makes every loaded
    scratchlm op an Inductor fallback, so Inductor never formats their arguments to register them itself (the
    torch 2.11 hang); calling it again changes nothing."""
    from torch._inductor import lowering

    from scratchlm import kernels

    kernels.register_compile_fallbacks()
    ops = [torch.ops.scratchlm.greedy.default, torch.ops.scratchlm.sample.default]
    registered = [lowering.lowerings[op] for op in ops]
    kernels.register_compile_fallbacks()
    assert [lowering.lowerings[op] for op in ops] == registered


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.8), dict(temperature=1.0, top_p=0.9)],
                         ids=str)
def test_speculative_decoding_through_the_kernels(monkeypatch, sampling):
    """Speculative rounds pick (greedy) and draw (Gumbel-max on the drafts' and the residual's probabilities)
    with the kernels where they run: the very tokens and statistics of the PyTorch path."""
    from scratchlm.inference import sampling as sampling_module
    from scratchlm.inference.speculative import SpeculativeDecoder
    from scratchlm.model import ModelConfig, TransformerLM

    counted = CountedKernels()
    torch.manual_seed(0)
    models = [TransformerLM(ModelConfig(vocab_size=300, d_model=d, n_layers=1, n_heads=2, context_length=32),
                            device=DEVICE).eval() for d in (32, 16)]
    results = {}
    for name, kernels in (("torch", None), ("kernel", counted)):
        monkeypatch.setattr(sampling_module, "_token_kernels", kernels)
        monkeypatch.setattr(sampling_module, "_kernel_device_type", DEVICE.type)
        results[name] = SpeculativeDecoder(*models, 20, k=3).generate([1, 2, 3], 12, seed=7, **sampling)
    assert set(counted.calls) == {"greedy" if sampling["temperature"] == 0 else "sample"}, counted.calls
    assert results["kernel"] == results["torch"]
