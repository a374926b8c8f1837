"""Perplexity/bits per byte and multiple-choice scores against direct float64 computations on a tiny model."""

from __future__ import annotations

import math

import torch

from scratchlm.eval.datasets import MCQuestion, load_mmlu
from scratchlm.eval.multiple_choice import evaluate_mmlu, mmlu_prompt, score_continuations
from scratchlm.eval.perplexity import text_perplexity
from tests.eval.tiny import byte_tokenizer, tiny_model


def _direct_nll(model, ids: list[int]) -> float:
    """Total NLL in nats of ids[1:] given the prefix, in float64 (one window: ids fit the context)."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(x[:, :-1]).double(), -1)
    return -float(logp.gather(-1, x[:, 1:, None]).sum())


def test_perplexity_and_bits_per_byte_match_a_direct_computation():
    tok = byte_tokenizer()
    model = tiny_model(tok.vocab_size, context_length=16)
    text = "The quick brown fox jumps over the lazy dog. Ünïcode bytes count too! " * 2
    ids = tok.encode(text)
    # windows of 17 tokens overlapping by one: every token after the first predicted once
    total = sum(_direct_nll(model, ids[s : s + 17]) for s in range(0, len(ids) - 1, 16))
    result = text_perplexity(model, tok, text, batch_size=3)
    n_bytes = len(text.encode()) - len(tok.decode_bytes(ids[:1]))
    assert result["tokens"] == len(ids) - 1 and result["bytes"] == n_bytes
    assert math.isclose(result["loss"], total / (len(ids) - 1), rel_tol=1e-5)
    assert math.isclose(result["bits_per_byte"], total / math.log(2) / n_bytes, rel_tol=1e-5)
    assert math.isclose(result["perplexity"], math.exp(total / (len(ids) - 1)), rel_tol=1e-5)


def test_score_continuations_equals_direct_loglikelihood():
    tok = byte_tokenizer()
    model = tiny_model(tok.vocab_size, context_length=32)
    requests = [("Question: 2+2?\nAnswer:", " 4"), ("Question: 2+2?\nAnswer:", " five"), ("Hi", " there friend")]
    scores = score_continuations(model, tok, requests, batch_size=2)
    for (context, continuation), score in zip(requests, scores, strict=True):
        ctx, cont = tok.encode(context), tok.encode(continuation)
        direct = _direct_nll(model, ctx + cont) - (_direct_nll(model, ctx) if len(ctx) > 1 else 0.0)
        assert math.isclose(score, -direct, rel_tol=1e-5, abs_tol=1e-5)


def test_long_contexts_lose_their_start():
    tok = byte_tokenizer()
    model = tiny_model(tok.vocab_size, context_length=16)
    long_context = "x" * 100 + "abcdefghijklmn"
    [score] = score_continuations(model, tok, [(long_context, " A")])
    [same] = score_continuations(model, tok, [("xabcdefghijklmn", " A")])  # the 15 tokens that fit beside " A"
    assert math.isclose(score, same, rel_tol=1e-5)


def test_mmlu_prediction_is_the_best_scoring_letter():
    tok = byte_tokenizer()
    model = tiny_model(tok.vocab_size, context_length=256)
    questions = [MCQuestion("high_school_physics", f"What is {i}?", ("a", "b", "c", "d"), i % 4) for i in range(4)]
    dev = [MCQuestion("high_school_physics", "Solved?", ("w", "x", "y", "z"), 2)]
    prompt = mmlu_prompt(questions[0], dev)
    assert prompt.startswith("The following are multiple choice questions (with answers) about high school physics.")
    assert "Solved?\nA. w\nB. x\nC. y\nD. z\nAnswer: C\n\nWhat is 0?\nA. a" in prompt and prompt.endswith("Answer:")
    metrics, records = evaluate_mmlu(model, tok, questions, dev, shots=1)
    for q, record in zip(questions, records, strict=True):
        scores = score_continuations(model, tok, [(mmlu_prompt(q, dev), f" {letter}") for letter in "ABCD"])
        assert record["prediction"] == "ABCD"[max(range(4), key=scores.__getitem__)]
    assert metrics["accuracy"] == sum(r["prediction"] == r["answer"] for r in records) / 4 and metrics["n"] == 4


def test_load_mmlu_reads_the_shared_csvs(data_path):
    data_path("eval/mmlu/dev")
    dev = load_mmlu("dev")
    assert len(dev) == 57 * 5 and len({q.subject for q in dev}) == 57
    assert all(len(q.choices) == 4 and 0 <= q.answer < 4 for q in dev)


def test_mmlu_in_a_chat_template_scores_the_reply():
    """With format_prompt the question block is wrapped and the letters are scored without a leading space."""
    tok = byte_tokenizer()
    model = tiny_model(tok.vocab_size, context_length=256)
    questions = [MCQuestion("anatomy", f"Which {i}?", ("a", "b", "c", "d"), i % 4) for i in range(3)]
    wrap = lambda text: f"<user>{text}</user><assistant>"  # noqa: E731
    _, records = evaluate_mmlu(model, tok, questions, [], format_prompt=wrap)
    _, plain = evaluate_mmlu(model, tok, questions, [])
    for q, record in zip(questions, records, strict=True):
        scores = score_continuations(model, tok, [(wrap(mmlu_prompt(q, [])), letter) for letter in "ABCD"])
        assert record["scores"] == scores
    assert [r["scores"] for r in records] != [r["scores"] for r in plain]
