"""Speculative decoding: greedy output equals the target's, sampled output follows the target's distribution
exactly (chi-square against enumeration, with a draft-only control that must fail), stops and errors."""

from __future__ import annotations

import pytest
import torch

from scratchlm.inference import generate, generate_batch, sample_next
from scratchlm.inference.sampling import sampling_probs
from scratchlm.inference.speculative import SpeculativeDecoder, speculative_generate
from scratchlm.model import ModelConfig, TransformerLM
from tests.inference import stats

PROMPTS = [[1, 2, 3], [7], [5, 6, 7, 8, 9, 10, 11]]


def make_model(seed: int, vocab: int = 40, context: int = 64, d_model: int = 32, n_layers: int = 2,
               n_heads: int = 4) -> TransformerLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, context_length=context, d_model=d_model, n_layers=n_layers, n_heads=n_heads)
    return TransformerLM(cfg, dtype=torch.float64)


@pytest.fixture(scope="module")
def target() -> TransformerLM:
    return make_model(0)


@pytest.fixture(scope="module")
def draft() -> TransformerLM:
    return make_model(1, d_model=16, n_layers=1, n_heads=2)


# -- the filtered distribution ------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(temperature=0.7), dict(top_k=4), dict(top_p=0.8),
                                    dict(temperature=1.3, top_k=6, top_p=0.9)])
def test_sampling_probs_is_what_sample_next_draws_from(kwargs):
    """Same float32 probabilities, so the same generator state gives the very same draws; and their
    frequencies follow the returned probabilities."""
    logits = torch.randn(1, 10, generator=torch.Generator().manual_seed(3)).expand(20_000, -1)
    probs = sampling_probs(logits, **kwargs)
    ours = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(0)).squeeze(-1)
    theirs = sample_next(logits, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(ours, theirs)
    freq = torch.bincount(theirs, minlength=10).float() / len(theirs)
    assert (freq - probs[0]).abs().max() < 0.015


def test_sampling_probs_greedy_is_one_hot_argmax():
    logits = torch.randn(5, 50)
    assert torch.equal(sampling_probs(logits, temperature=0), torch.eye(50)[logits.argmax(-1)])


# -- greedy: exactly the target's output --------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_equals_target_greedy(target, draft, k):
    for prompt in PROMPTS:
        expected = generate(target, prompt, 20, temperature=0)
        out, stats = speculative_generate(target, draft, prompt, 20, k=k, temperature=0)
        assert out == expected
        assert stats["accepted"] + stats["rounds"] == 20  # each round: its accepted drafts + one target token
        out, stats = speculative_generate(target, target, prompt, 20, k=k, temperature=0)
        assert out == expected
        # a self-draft always agrees, which also shows its cache followed the accepted tokens (bonus included)
        assert stats["acceptance_rate"] == 1.0
        assert stats["rounds"] == -(-20 // (k + 1)) and stats["tokens_per_target_forward"] == 20 / stats["rounds"]


def test_sampled_self_draft_accepts_everything(target):
    """p == q (up to rounding) makes every acceptance certain: any drift of the draft's cache would show."""
    out, stats = speculative_generate(target, target, [4, 2], 30, k=4, seed=0, top_p=0.95)
    assert len(out) == 30 and stats["acceptance_rate"] == 1.0 and stats["rounds"] == 6


# -- sampling: exactly the target's distribution ------------------------------------------------------

RUNS = 1500
VOCAB = 8
PROMPT = [3, 1]


@pytest.fixture(scope="module")
def tiny_pair() -> tuple[TransformerLM, TransformerLM]:
    """1-layer float64 models on 8 tokens: the joint law of 2 tokens has 64 outcomes, enumerable exactly."""
    return (make_model(10, vocab=VOCAB, context=16, d_model=16, n_layers=1, n_heads=2),
            make_model(11, vocab=VOCAB, context=16, d_model=16, n_layers=1, n_heads=2))


def exact_two_token_law(model: TransformerLM, **sampling) -> torch.Tensor:
    return stats.exact_two_token_law(model, PROMPT, lambda logits, _: sampling_probs(logits, **sampling))


def chi_square_p_value(samples: list[tuple[int, int]], law: torch.Tensor) -> float:
    return stats.chi_square_p_value([a * VOCAB + b for a, b in samples], law)


@pytest.mark.parametrize(("k", "max_new", "top_p"), [(1, 2, None), (3, 3, None), (2, 3, 0.9)])
def test_first_two_tokens_follow_the_target_law(tiny_pair, k, max_new, top_p):
    """k=1 within 2 tokens reaches the bonus token and a draft-free last round; k>=2 with 3 tokens reaches
    the residual at the second draft position. Fixed seeds: deterministic, and a correct sampler fails
    p < 0.001 only by a 1-in-1000 bad luck that, once passed, stays passed."""
    target, draft = tiny_pair
    law = exact_two_token_law(target, top_p=top_p)
    samples = [tuple(speculative_generate(target, draft, PROMPT, max_new, k=k, top_p=top_p, seed=s)[0][:2])
               for s in range(RUNS)]
    assert chi_square_p_value(samples, law) > 1e-3


@pytest.mark.parametrize("top_p", [None, 0.9])
def test_the_draft_alone_fails_the_same_test(tiny_pair, top_p):
    """The test has power: the draft's own law (what a buggy acceptance rule drifts towards) is rejected."""
    target, draft = tiny_pair
    law = exact_two_token_law(target, top_p=top_p)
    samples = generate_batch(draft, [PROMPT] * RUNS, 2, top_p=top_p, seed=0)
    assert chi_square_p_value([tuple(s) for s in samples], law) < 1e-3
    # and the control is a fair one: the same test accepts the draft's samples against the draft's own law
    assert chi_square_p_value([tuple(s) for s in samples], exact_two_token_law(draft, top_p=top_p)) > 1e-3


# -- stops, lengths, errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("self_draft", [False, True])
def test_stops_after_the_first_stop_token(target, draft, self_draft):
    free = generate(target, PROMPTS[0], 20, temperature=0)
    stop = free[6]
    expected = free[: free.index(stop) + 1]
    out, _ = speculative_generate(target, target if self_draft else draft, PROMPTS[0], 20, k=4, temperature=0,
                                  stop_ids=[stop])
    assert out == expected


def test_exactly_max_new_tokens(target, draft):
    free = generate(target, PROMPTS[0], 12, temperature=0)
    for n in range(13):  # all k+1 = 5 tokens accepted per round: every n that is not a multiple needs clamping
        assert speculative_generate(target, target, PROMPTS[0], n, k=4, temperature=0)[0] == free[:n]
        assert len(speculative_generate(target, draft, PROMPTS[0], n, k=4, seed=n)[0]) == n


def test_one_round_shape_a_sequence_until_the_context_ends(target, draft, monkeypatch):
    """Every round proposes k drafts, the last one too (one graph / compilation a sequence); only rounds that
    would pass the context's end propose fewer."""
    decoder = SpeculativeDecoder(target, draft, 64, k=4)
    shapes = []
    original = decoder._run_round
    monkeypatch.setattr(decoder, "_run_round", lambda k, feed, sampling: shapes.append(k) or original(k, feed, sampling))
    decoder.generate(PROMPTS[0], 13, temperature=0)
    assert set(shapes) == {4}
    shapes.clear()
    assert len(decoder.generate([1] * 50, 14, seed=0)[0]) == 14  # ends at position 64 = the context length
    assert shapes[0] == 4 and shapes[-1] < 4


def test_reproducible_with_a_seed(target, draft):
    a = speculative_generate(target, draft, [9], 15, k=3, seed=5, top_k=10)
    assert a == speculative_generate(target, draft, [9], 15, k=3, seed=5, top_k=10)


def test_a_reused_decoder_equals_fresh_calls(target, draft):
    """Caches and buffers left by earlier (longer) sequences never leak into a later one."""
    decoder = SpeculativeDecoder(target, draft, 40, k=3)
    settings = [dict(temperature=0), dict(seed=4, top_p=0.9), dict(seed=1, temperature=0.7)]
    for prompt, kw in zip([PROMPTS[2], PROMPTS[1], PROMPTS[0]], settings, strict=True):
        assert decoder.generate(prompt, 14, **kw) == speculative_generate(target, draft, prompt, 14, k=3, **kw)
    with pytest.raises(ValueError, match="exceeds this decoder's 40 positions"):
        decoder.generate([1] * 30, 11)


@pytest.mark.gpu
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cuda_graph_rounds_equal_eager_rounds(temperature):
    """On CUDA each round is a graph replay: the same tokens and statistics as running the rounds eagerly."""
    target, draft = make_model(0).cuda(), make_model(1, d_model=16, n_layers=1, n_heads=2).cuda()
    graphed = SpeculativeDecoder(target, draft, 64, k=4)
    eager = SpeculativeDecoder(target, draft, 64, k=4, cuda_graphs=False)
    for seed, prompt in enumerate(PROMPTS * 2):
        assert graphed.generate(prompt, 25, temperature=temperature, seed=seed) == \
            eager.generate(prompt, 25, temperature=temperature, seed=seed)
    assert graphed._graphs.graphs  # captured (and replayed: the prompts repeat every round shape)


@pytest.mark.gpu
def test_compiled_rounds_equal_eager_rounds_greedy():
    """compile=True: Inductor's kernels for each round shape, captured as graphs; greedy output unchanged (the
    target's greedy tokens, float32 models: no argmax near-ties to flip)."""
    target, draft = make_model(0).cuda(), make_model(1, d_model=16, n_layers=1, n_heads=2).cuda()
    compiled = SpeculativeDecoder(target, draft, 64, k=4, compile=True)
    eager = SpeculativeDecoder(target, draft, 64, k=4, cuda_graphs=False)
    for prompt in PROMPTS:
        assert compiled.generate(prompt, 25, temperature=0.0)[0] == eager.generate(prompt, 25, temperature=0.0)[0]


def test_errors(target, draft):
    with pytest.raises(ValueError, match="vocabularies differ"):
        speculative_generate(target, make_model(2, vocab=41), [1], 5)
    short_draft = make_model(3, context=16)
    with pytest.raises(ValueError, match="exceeds the draft's context length 16"):
        speculative_generate(target, short_draft, [1] * 10, 7)
    assert len(speculative_generate(target, short_draft, [1] * 10, 6, k=8, seed=0)[0]) == 6  # k needs no room
    with pytest.raises(ValueError, match="exceeds the target's context length 64"):
        speculative_generate(target, draft, [1] * 60, 5)
    with pytest.raises(ValueError, match="k must be"):
        speculative_generate(target, draft, [1], 5, k=0)
    with pytest.raises(ValueError, match="at least one token"):
        speculative_generate(target, draft, [], 5)
    with pytest.raises(ValueError, match="top_p"):
        speculative_generate(target, draft, [1], 5, top_p=0)


# -- what acceptance a speed-up needs --------------------------------------------------------------------

def test_expected_tokens_per_round_against_a_simulation():
    from scratchlm.inference.speculative import expected_tokens_per_round

    generator = torch.Generator().manual_seed(0)
    for acceptance, k in [(0.0, 3), (0.6, 4), (0.9, 2), (1.0, 5)]:
        accepted = torch.rand(200_000, k, generator=generator) < acceptance
        tokens = accepted.long().cumprod(dim=1).sum(dim=1) + 1  # the accepted run, then the target's token
        assert abs(tokens.double().mean().item() - expected_tokens_per_round(acceptance, k)) < 0.01
    with pytest.raises(ValueError, match="acceptance"):
        expected_tokens_per_round(1.5, 2)


def test_acceptance_for_speedup_inverts_it():
    from scratchlm.inference.speculative import acceptance_for_speedup, expected_tokens_per_round

    for k, round_cost, speedup in [(4, 2.0, 1.0), (4, 1.5, 2.0), (8, 1.3, 3.0)]:
        a = acceptance_for_speedup(speedup, k, round_cost)
        assert abs(expected_tokens_per_round(a, k) / round_cost - speedup) < 1e-9
    assert acceptance_for_speedup(1.0, 4, 0.8) == 0.0  # rounds cheaper than a step: any acceptance
    assert acceptance_for_speedup(2.0, 2, 2.0) is None  # 4 tokens a round needed, at most 3
