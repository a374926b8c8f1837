"""The continuous-batching engine against full recomputation: greedy token for token, sampling in law
(chi-square against the enumerated law of the first two tokens), log-probabilities, repetition penalty
against Hugging Face's processor, stop tokens and stop strings, slot reuse, aborts and errors."""

from __future__ import annotations

import pytest
import torch

from scratchlm.inference import generate
from scratchlm.inference.engine import Engine, EngineConfig, SamplingParams
from scratchlm.inference.sampling import (
    apply_repetition_penalty,
    filtered_logits,
    mix64,
    sampling_probs,
    seeded_uniform,
)
from scratchlm.model import ModelConfig, TransformerLM
from tests.inference import stats

PROMPTS = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11], [4], [9, 9, 2, 7, 1], [3, 3]]


def make_model(seed: int = 0, vocab: int = 40, context: int = 32, n_layers: int = 2, **kwargs) -> TransformerLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, context_length=context, d_model=32, n_layers=n_layers, n_heads=4, **kwargs)
    return TransformerLM(cfg, dtype=torch.float64).eval()


class LetterTokenizer:
    """Token i is two letters: stop strings can sit inside one token or span two."""

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b"".join(bytes([97 + i % 26, 97 + (7 * i + 3) % 26]) for i in ids)


# -- greedy: the naive reference, token for token -----------------------------------------------------

@pytest.mark.parametrize("kwargs,slots,prefill_tokens", [
    (dict(), 2, 16384), (dict(n_kv_heads=1, qk_norm=True), 2, 16384), (dict(sliding_window=5), 2, 16384),
    (dict(tie_embeddings=True, attention="sdpa"), 2, 16384),
    (dict(), 5, 16384),  # all five prompts prefilled in one padded batch
    (dict(n_kv_heads=1), 5, 8)])  # ... and in groups of at most 8 padded tokens
def test_greedy_equals_full_recompute_with_slot_reuse(kwargs, slots, prefill_tokens):
    """5 requests of different lengths through `slots` slots (2: slots are reused), bursts of 3, prefill in
    chunks of 2 positions over right-padded prompts."""
    model = make_model(**kwargs)
    engine = Engine(model, EngineConfig(max_slots=slots, sync_every=3, prefill_chunk=2, prefill_tokens=prefill_tokens))
    outs = engine.generate(PROMPTS, SamplingParams(max_tokens=12, temperature=0))
    for prompt, out in zip(PROMPTS, outs):
        assert out.token_ids == generate(model, prompt, 12, temperature=0)
        assert out.finish_reason == "length" and out.prompt_token_ids == prompt
    assert engine.num_running == 0 and not engine.has_work


@pytest.mark.parametrize("prefill_chunk", [512, 5])
@pytest.mark.parametrize("kwargs", [dict(), dict(sliding_window=5)])
def test_padded_prefill_chunks_change_nothing(prefill_chunk, kwargs):
    """The graph-ready prefill (fixed buffers; chunk lengths padded to powers of two >= 16 within the chunk size
    and the cache: on CUDA it comes with prefill_graphs, forced on here) writes junk past the prompts' ends up
    to the padded length, never seen: greedy output equals full recompute. The 26-token prompt fills the
    32-position cache, so its padding is capped by the cache."""
    model = make_model(**kwargs)
    engine = Engine(model, EngineConfig(max_slots=2, sync_every=3, prefill_chunk=prefill_chunk))
    engine._pad_prefill = True
    assert [engine._chunk_length(0, 6), engine._chunk_length(0, 25), engine._chunk_length(28, 2)] == (
        [16, 32, 4] if prefill_chunk == 512 else [5, 5, 4])
    prompts = PROMPTS + [list(range(1, 27))]
    outs = engine.generate(prompts, SamplingParams(max_tokens=5, temperature=0))
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == generate(model, prompt, 5, temperature=0)


def test_repetition_penalty_greedy_equals_full_recompute():
    model = make_model()
    engine = Engine(model, EngineConfig(max_slots=3, sync_every=4))
    outs = engine.generate(PROMPTS, SamplingParams(max_tokens=15, temperature=0, repetition_penalty=1.8))
    for prompt, out in zip(PROMPTS, outs):
        assert out.token_ids == generate(model, prompt, 15, temperature=0, repetition_penalty=1.8)
    # the penalty changes something (else this test would pass with the penalty ignored)
    assert [o.token_ids for o in outs] != [generate(model, p, 15, temperature=0) for p in PROMPTS]


# -- batching does not change a request's output ------------------------------------------------------

@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=0.9, top_p=0.9, seed=7),
                                      dict(temperature=1.2, top_k=5, repetition_penalty=1.3, seed=3)])
def test_continuous_batched_equals_each_alone(sampling):
    """Mixed lengths and settings, more requests than slots, different burst sizes: every request's tokens and
    log-probabilities equal those it gets alone in a 1-slot engine (seeded sampling is batch-independent)."""
    model = make_model()
    params = [SamplingParams(max_tokens=4 + 3 * i, **sampling) for i in range(len(PROMPTS))]
    params[1] = SamplingParams(max_tokens=9, temperature=0)  # a greedy row among sampled ones
    batched = Engine(model, EngineConfig(max_slots=3, sync_every=5)).generate(PROMPTS, params)
    for prompt, p, out in zip(PROMPTS, params, batched):
        alone = Engine(model, EngineConfig(max_slots=1, sync_every=2)).generate([prompt], p)[0]
        assert out.token_ids == alone.token_ids and len(out.token_ids) == p.max_tokens
        torch.testing.assert_close(torch.tensor(out.logprobs), torch.tensor(alone.logprobs), rtol=1e-12, atol=1e-12)


# -- sampling: the naive law ---------------------------------------------------------------------------

VOCAB, PROMPT, RUNS = 8, [3], 2000  # a 1-token prompt needs no prefill forward: fast


def naive_law(model: TransformerLM, temperature: float, top_k, top_p, penalty: float):
    """The law `generate` samples from, with the repetition penalty written out in float64 here."""
    def process(logits, sequences):
        seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, sequences, True)
        logits = torch.where(seen & (logits > 0), logits / penalty, torch.where(seen, logits * penalty, logits))
        return sampling_probs(logits.double(), temperature, top_k, top_p)
    return stats.exact_two_token_law(model, PROMPT, process)


@pytest.mark.parametrize(("temperature", "top_k", "top_p", "penalty"),
                         [(1.0, None, None, 1.0), (0.7, None, 0.8, 1.0), (1.3, 5, None, 1.5)])
def test_sampled_pairs_follow_the_naive_law(temperature, top_k, top_p, penalty):
    """2,000 requests of 2 tokens (one seed each) through 64 slots; the joint law of the two tokens (64
    outcomes) is enumerated from the model. The control: the same samples against the law without the
    settings must be rejected (the test has power)."""
    model = make_model(10, vocab=VOCAB, context=16)
    params = [SamplingParams(max_tokens=2, temperature=temperature, top_k=top_k, top_p=top_p,
                             repetition_penalty=penalty, seed=s) for s in range(RUNS)]
    outs = Engine(model, EngineConfig(max_slots=64, max_len=8)).generate([PROMPT] * RUNS, params)
    pairs = [o.token_ids[0] * VOCAB + o.token_ids[1] for o in outs]
    assert stats.chi_square_p_value(pairs, naive_law(model, temperature, top_k, top_p, penalty)) > 1e-3
    other = (0.5, None, None, 1.0) if (temperature, top_k, top_p, penalty) == (1.0, None, None, 1.0) else (1.0, None, None, 1.0)
    assert stats.chi_square_p_value(pairs, naive_law(model, *other)) < 1e-3


def test_seeded_noise_is_splitmix64_and_uniform():
    """mix64 against a pure-Python SplitMix64 finaliser; the uniforms fill 20 bins evenly (chi-square) and
    differ between seeds, positions and token ids."""
    def splitmix(z: int) -> int:
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 % 2**64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB % 2**64
        return z ^ (z >> 31)
    values = [0, 1, 2**63 - 1, -1, -(2**63), 123456789123456789]
    ours = mix64(torch.tensor(values)).tolist()
    assert [v % 2**64 for v in ours] == [splitmix(v % 2**64) for v in values]
    u = seeded_uniform(torch.arange(50), torch.arange(50) * 3, 400)  # (50, 400)
    assert u.min() > 0 and u.max() < 1
    bins = (u.flatten() * 20).long().tolist()
    assert stats.chi_square_p_value(bins, torch.full((20,), 1 / 20, dtype=torch.float64)) > 1e-3
    assert not torch.equal(u[0], seeded_uniform(torch.tensor([0]), torch.tensor([1]), 400)[0])


# -- log-probabilities ------------------------------------------------------------------------------------

def test_logprobs_equal_full_recompute():
    """model logprob = log_softmax(raw logits) at the token; sampling logprob = log of the processed law."""
    model = make_model()
    settings = dict(temperature=0.8, top_k=12, top_p=0.9, repetition_penalty=1.4)
    out = Engine(model, EngineConfig(max_slots=2, sync_every=3)).generate(
        PROMPTS[:3], SamplingParams(max_tokens=10, seed=5, **settings))
    for prompt, o in zip(PROMPTS, out):
        seq = torch.tensor([prompt + o.token_ids])
        with torch.no_grad():
            logits = model(seq)[0, len(prompt) - 1 : -1]  # (10, vocab): the logits each token was drawn from
        chosen = torch.tensor(o.token_ids)[:, None]
        expected = torch.log_softmax(logits, -1).gather(-1, chosen)[:, 0]
        torch.testing.assert_close(torch.tensor(o.logprobs, dtype=torch.float64), expected, rtol=0, atol=1e-10)
        seen = torch.stack([torch.zeros(40, dtype=torch.bool).index_fill_(0, seq[0, : len(prompt) + i], True)
                            for i in range(10)])
        processed = filtered_logits(apply_repetition_penalty(logits, seen, 1.4), 0.8, 12, 0.9)
        expected = torch.log_softmax(processed, -1).gather(-1, chosen)[:, 0]
        torch.testing.assert_close(torch.tensor(o.sampling_logprobs, dtype=torch.float64), expected, rtol=0, atol=1e-10)


def test_top_logprobs_are_the_model_top_n():
    """Each token's alternatives: the n most likely tokens under the model (raw logits) with their log-probs, best
    first, n per request (0: none) in one batch; more than the engine holds is refused."""
    model = make_model()
    engine = Engine(model, EngineConfig(max_slots=3, sync_every=4, max_top_logprobs=6))
    wanted = [5, 0, 2]
    params = [SamplingParams(max_tokens=7, seed=i, temperature=0.9, top_logprobs=n) for i, n in enumerate(wanted)]
    for prompt, n, o in zip(PROMPTS[:3], wanted, engine.generate(PROMPTS[:3], params), strict=True):
        assert len(o.top_logprobs) == (len(o.token_ids) if n else 0)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + o.token_ids]))[0, len(prompt) - 1 : -1]
        top = torch.log_softmax(logits, -1).topk(max(n, 1), dim=-1)
        for i, alternatives in enumerate(o.top_logprobs):
            assert [t for t, _ in alternatives] == top.indices[i].tolist()
            torch.testing.assert_close(torch.tensor([lp for _, lp in alternatives], dtype=torch.float64),
                                       top.values[i], rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="exceeds this engine's 6"):
        engine.add_request([1], SamplingParams(top_logprobs=7))
    with pytest.raises(ValueError, match="top_logprobs must be >= 0"):
        SamplingParams(top_logprobs=-1)
    greedy = Engine(model).generate([PROMPTS[0]], SamplingParams(max_tokens=3, temperature=0))[0]
    assert greedy.sampling_logprobs == [0.0, 0.0, 0.0] and all(lp < 0 for lp in greedy.logprobs)


# -- repetition penalty ----------------------------------------------------------------------------------

def test_repetition_penalty_by_hand_and_against_transformers():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, -3.0]])
    seen = torch.tensor([[True, True, False, True, False]])
    expected = torch.tensor([[1.0, -2.0, 0.5, 0.0, -3.0]])  # 2/2, -1*2, unseen, 0 either way, unseen
    assert torch.equal(apply_repetition_penalty(logits, seen, 2.0), expected)
    transformers = pytest.importorskip("transformers")
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    input_ids = torch.randint(0, 50, (4, 12), generator=gen)
    reference = transformers.RepetitionPenaltyLogitsProcessor(1.7)(input_ids, scores.clone())
    seen = torch.zeros(4, 50, dtype=torch.bool).scatter_(1, input_ids, True)
    torch.testing.assert_close(apply_repetition_penalty(scores, seen, 1.7), reference, rtol=0, atol=0)
    per_row = apply_repetition_penalty(scores, seen, torch.tensor([[1.7], [1.0], [1.7], [1.0]], dtype=torch.float64))
    assert torch.equal(per_row[0], reference[0]) and torch.equal(per_row[1], scores[1])


# -- stops --------------------------------------------------------------------------------------------------

def test_stop_token_is_kept_and_ends_the_request():
    model = make_model()
    free = generate(model, PROMPTS[0], 12, temperature=0)
    stop = free[5]
    out = Engine(model, EngineConfig(sync_every=4)).generate(
        [PROMPTS[0]], SamplingParams(max_tokens=12, temperature=0, stop_token_ids=(stop,)))[0]
    assert out.token_ids == free[: free.index(stop) + 1] and out.finish_reason == "stop"


@pytest.mark.parametrize("span", [(3, 6), (4, 6), (0, 1)])
def test_stop_string_cuts_the_text(span):
    """Token i decodes to two letters, so chars 3..5 span two tokens, 4..5 sit in one token."""
    model, tok = make_model(), LetterTokenizer()
    engine = Engine(model, EngineConfig(sync_every=5), tokenizer=tok)
    free = engine.generate([PROMPTS[1]], SamplingParams(max_tokens=14, temperature=0))[0]
    assert free.text == tok.decode_bytes(free.token_ids).decode()
    stop = free.text[span[0] : span[1]]
    first = free.text.index(stop)
    out = engine.generate([PROMPTS[1]], SamplingParams(max_tokens=14, temperature=0, stop=("zzzzz", stop)))[0]
    assert out.text == free.text[:first] and out.finish_reason == "stop"
    assert out.token_ids == free.token_ids[: (first + len(stop) - 1) // 2 + 1]  # up to the completing token


def test_streamed_text_never_shows_a_stop_string_prefix():
    """Streaming one token per step: text that may begin a stop string is held back, and released when the
    string does not complete."""
    from scratchlm.inference.text import TextStream
    pieces = {0: b"ab", 1: b"\nU", 2: b"se", 3: b"r:", 4: b"\nx", 5: b"\xc3", 6: b"\xa9!"}
    stream = TextStream(lambda ids: b"".join(pieces[i] for i in ids), stop=("\nUser:",))
    shown = []
    for token in (0, 4, 5, 6, 1, 2):
        assert not stream.push(token)
        shown.append(stream.pop())
    assert shown == ["ab", "\nx", "", "é!", "", ""]  # "\nU", "\nUse" held back; split "é" waits for its byte
    assert stream.push(3) and stream.text == "ab\nxé!" and stream.pop() == ""
    other = TextStream(lambda ids: b"".join(pieces[i] for i in ids), stop=("\nUser:",))
    other.push(1)
    other.finish()
    assert other.pop() == "" and other.pop(final=True) == "\nU"


# -- slots, aborts, errors ------------------------------------------------------------------------------

def test_abort_frees_the_slot_and_the_queue_moves_on():
    model = make_model()
    engine = Engine(model, EngineConfig(max_slots=1, sync_every=2))
    long = engine.add_request(PROMPTS[0], SamplingParams(max_tokens=20, temperature=0))
    short = engine.add_request(PROMPTS[2], SamplingParams(max_tokens=3, temperature=0))
    dropped = engine.add_request(PROMPTS[3], SamplingParams(max_tokens=3, temperature=0))
    assert [o.request_id for o in engine.step()] == [long] and engine.num_waiting == 2
    assert engine.abort(long) and engine.abort(dropped) and not engine.abort(dropped)
    assert engine.num_running == 0 and engine.num_waiting == 1
    outs = [o for _ in range(3) for o in engine.step()]
    assert {o.request_id for o in outs} == {short} and outs[-1].finished and not engine.has_work
    assert [t for o in outs for t in o.token_ids] == generate(model, PROMPTS[2], 3, temperature=0)


def test_errors():
    model = make_model()
    engine = Engine(model, EngineConfig(max_len=16))
    with pytest.raises(ValueError, match="exceeds the engine's 16 positions"):
        engine.add_request([1] * 10, SamplingParams(max_tokens=7))
    with pytest.raises(ValueError, match="at least one token"):
        engine.add_request([])
    with pytest.raises(ValueError, match="exceeds"):  # all or nothing: the valid first prompt is not left queued
        engine.generate([[1], [1] * 16], SamplingParams(max_tokens=2))
    assert not engine.has_work
    with pytest.raises(ValueError, match="token ids must be in"):
        engine.add_request([40])
    with pytest.raises(ValueError, match="need an engine with a tokenizer"):
        engine.add_request([1], SamplingParams(max_tokens=2, stop=("x",)))
    for bad in (dict(max_tokens=0), dict(temperature=-1), dict(top_p=0), dict(top_k=0), dict(repetition_penalty=0),
                dict(stop=("",))):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    with pytest.raises(ValueError, match="exceeds the model's context length"):
        Engine(model, EngineConfig(max_len=33))
    with pytest.raises(ValueError, match="max_slots"):
        EngineConfig(max_slots=0)
    with pytest.raises(ValueError, match="max_cuda_graphs must be >= 1"):
        EngineConfig(max_cuda_graphs=0)


def test_decode_step_traces_as_one_graph():
    """What `compile=True` hands to torch.compile on CUDA traces without graph breaks (one fused program per
    step); traced here with the eager backend, it gives the same tokens."""
    model = make_model(n_layers=1)
    settings = [SamplingParams(max_tokens=6, temperature=0),
                SamplingParams(max_tokens=6, temperature=0.8, top_k=5, repetition_penalty=1.2, seed=2)]
    for params in settings:
        expected = Engine(model, EngineConfig(max_slots=2)).generate(PROMPTS[:2], params)
        engine = Engine(model, EngineConfig(max_slots=2))
        engine._decode = torch.compile(engine._decode_step, backend="eager", dynamic=False, fullgraph=True)
        assert [o.token_ids for o in engine.generate(PROMPTS[:2], params)] == [o.token_ids for o in expected]


@pytest.mark.gpu
def test_bf16_decode_kernels_with_programmatic_dependent_launch(monkeypatch):
    """A bf16 batch-1 decode runs the fused GEMV and the decode-attention kernels, launched with programmatic
    dependent launch on Hopper: replayed from CUDA graphs they give the eager engine's greedy tokens, and the
    same tokens with PDL off."""
    from scratchlm import kernels

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, context_length=64, d_model=128, n_layers=2, n_heads=2)  # head dim 64
    model = TransformerLM(cfg, device="cuda", dtype=torch.bfloat16).eval()
    params = SamplingParams(max_tokens=12, temperature=0)

    def tokens(**config):
        return [o.token_ids for o in Engine(model, EngineConfig(max_slots=1, sync_every=4, **config)).generate(
            PROMPTS, params)]

    expected = tokens(cuda_graphs=False)
    assert tokens() == expected
    monkeypatch.setattr(kernels, "PDL", False)
    assert tokens() == expected


@pytest.mark.gpu
def test_graph_cache_keeps_at_most_max_cuda_graphs():
    """With room for two graphs, prompts of many lengths (a prefill graph per padded length, decode bursts of
    several row counts) keep evicting and re-capturing: outputs still equal the eager engine's."""
    model = make_model().cuda()
    prompts = [list(range(1, n + 1)) for n in (3, 17, 2, 30, 9, 17, 3)]
    params = SamplingParams(max_tokens=2, temperature=0)
    eager = Engine(model, EngineConfig(max_slots=2, sync_every=2, cuda_graphs=False)).generate(prompts, params)
    graphed = Engine(model, EngineConfig(max_slots=2, sync_every=2, max_cuda_graphs=2))
    assert [o.token_ids for o in graphed.generate(prompts, params)] == [o.token_ids for o in eager]
    assert len(graphed._graphs.graphs) == 2


@pytest.mark.gpu
@pytest.mark.parametrize(("compile", "prefill_graphs"), [(False, False), (True, False), (False, True)])
def test_cuda_graph_decode_equals_eager(compile, prefill_graphs):
    """CUDA graphs (each burst shape run once, captured, then replayed), with and without compiling the step,
    and with prefill chunks graphed too: greedy and seeded sampled tokens and log-probs equal the eager
    engine's (float64: no rounding-order ties), and graphs were replayed."""
    model = make_model().cuda()
    settings = [SamplingParams(max_tokens=10, temperature=0),
                SamplingParams(max_tokens=10, temperature=0.9, top_p=0.9, repetition_penalty=1.2, seed=4)]
    for params in settings:
        eager = Engine(model, EngineConfig(max_slots=2, sync_every=3, cuda_graphs=False)).generate(PROMPTS * 2, params)
        graphed = Engine(model, EngineConfig(max_slots=2, sync_every=3, compile=compile,
                                             prefill_graphs=prefill_graphs))
        outs = graphed.generate(PROMPTS * 2, params)
        assert [o.token_ids for o in outs] == [o.token_ids for o in eager]
        torch.testing.assert_close(torch.tensor([o.logprobs for o in outs]),
                                   torch.tensor([o.logprobs for o in eager]), rtol=0, atol=1e-9)
        assert graphed._graphs.graphs  # captured, and replayed: PROMPTS * 2 repeats every burst shape
        assert any(key[0] == "prefill" for key in graphed._graphs.graphs) == prefill_graphs
