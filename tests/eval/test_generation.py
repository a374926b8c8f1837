"""The generation wrapper: batching order, prompt fitting, stop tokens; rollouts built on it."""

from __future__ import annotations

import pytest
import torch

from scratchlm.alignment.chat import END, render_prompt, with_chat_tokens
from scratchlm.alignment.rollout import rollout
from scratchlm.eval.generation import fit_prompt, generate_ids, generate_texts
from scratchlm.inference import generate_batch
from tests.eval.tiny import byte_tokenizer, tiny_model


def test_generate_ids_returns_input_order_and_matches_single_calls():
    model = tiny_model(260, context_length=32)
    prompts = [[5] * 9, [1, 2], [7, 8, 9, 10, 11]]
    batched = generate_ids(model, prompts, 5, temperature=0.0, batch_size=2)
    for prompt, out in zip(prompts, batched, strict=True):
        assert out == generate_batch(model, [prompt], 5, temperature=0.0)[0]


def test_fit_prompt_keeps_the_end():
    assert fit_prompt(list(range(10)), context_length=8, max_new_tokens=3) == [5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="no room"):
        fit_prompt([1], context_length=8, max_new_tokens=8)


def test_generate_texts_stops_at_end_and_leaves_it_out_of_the_text():
    tok = with_chat_tokens(byte_tokenizer())
    model = tiny_model(tok.vocab_size, context_length=64)
    prompt_ids = tok.encode("x" * 100)[-60:]  # what fits beside 4 new tokens in a context of 64
    hidden = []
    handle = model.norm.register_forward_hook(lambda module, inputs, out: hidden.append(out[0, -1]))
    with torch.no_grad():  # every logit 0 but <|end|>'s, |h|^2 > 0 at the prompt's last position
        model(torch.tensor([prompt_ids]))
        handle.remove()
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.special_ids[END]] = hidden[0]
    [done] = generate_texts(model, tok, ["x" * 100], max_new_tokens=4)
    assert done.ids == [tok.special_ids[END]] and done.text == "" and done.finished
    assert len(done.prompt_ids) == 60  # cut from the left to fit 64 - 4


def test_rollout_repeats_prompts_and_masks_exactly_the_new_tokens():
    tok = with_chat_tokens(byte_tokenizer())
    model = tiny_model(tok.vocab_size, context_length=64)
    batch = rollout(model, tok, ["What is 1 + 2?", "Hi"], group_size=3, max_new_tokens=5, temperature=1.0, seed=0)
    assert batch.prompts == ["What is 1 + 2?"] * 3 + ["Hi"] * 3 and len(batch.texts) == 6
    for row in range(6):
        prompt_ids = tok.encode(render_prompt(batch.prompts[row]))
        n_prompt, n_new = len(prompt_ids), int(batch.response_mask[row].sum())
        assert batch.input_ids[row, :n_prompt].tolist() == prompt_ids
        assert not batch.response_mask[row, :n_prompt].any() and batch.response_mask[row, n_prompt : n_prompt + n_new].all()
        assert 1 <= n_new <= 5 and batch.finished[row] == (batch.input_ids[row, n_prompt + n_new - 1] == tok.special_ids[END])
    assert torch.equal(batch.response_lengths, batch.response_mask.sum(-1))
