"""The DPO loss against the direct formula on two tiny models, forward and gradient."""

from __future__ import annotations

import math

import torch

from scratchlm.alignment.chat import encode_example, with_chat_tokens
from scratchlm.alignment.data import PreferencePair
from scratchlm.alignment.dpo import dpo_loss, encode_pairs, fit_example, pair_logps
from tests.eval.tiny import byte_tokenizer, tiny_model


def _direct_logp(model, ids: list[int], mask: list[bool]) -> torch.Tensor:
    """log pi(response | prompt) = sum over response tokens of log_softmax, one sequence at a time (float64)."""
    x = torch.tensor([ids])
    logp = torch.log_softmax(model(x[:, :-1]).double(), -1)[0].gather(-1, x[0, 1:, None]).squeeze(-1)
    return logp[torch.tensor(mask[1:])].sum()


def test_dpo_loss_matches_the_direct_formula_forward_and_backward():
    tok = with_chat_tokens(byte_tokenizer())
    policy = tiny_model(tok.vocab_size, dtype=torch.float64, seed=1)
    reference = tiny_model(tok.vocab_size, dtype=torch.float64, seed=2)
    pairs = [PreferencePair([("user", "What is 2+2?")], "4", "five, I think"),
             PreferencePair([("user", "hi"), ("assistant", "hello"), ("user", "bye?")], "Goodbye!", "no")]
    encoded = encode_pairs(tok, pairs, width=64)
    beta = 0.3

    chosen, rejected = pair_logps(policy, encoded, torch.device("cpu"))
    with torch.no_grad():
        ref_chosen, ref_rejected = pair_logps(reference, encoded, torch.device("cpu"))
    losses, r_chosen, r_rejected = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    (grad_ours,) = torch.autograd.grad(losses.mean(), policy.lm_head.weight)

    direct = []
    for (c_ids, c_mask), (r_ids, r_mask) in encoded:
        with torch.no_grad():
            ref_margin = _direct_logp(reference, c_ids, c_mask) - _direct_logp(reference, r_ids, r_mask)
        margin = _direct_logp(policy, c_ids, c_mask) - _direct_logp(policy, r_ids, r_mask)
        direct.append(-torch.log(1 / (1 + torch.exp(-beta * (margin - ref_margin)))))
    direct = torch.stack(direct)
    (grad_direct,) = torch.autograd.grad(direct.mean(), policy.lm_head.weight)
    torch.testing.assert_close(losses, direct)
    torch.testing.assert_close(grad_ours, grad_direct)
    torch.testing.assert_close(r_chosen - r_rejected, beta * ((chosen - ref_chosen) - (rejected - ref_rejected)).detach())


def test_dpo_loss_values_on_hand_computed_numbers():
    loss, rc, rr = dpo_loss(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0]), torch.tensor([-1.5, -2.0]),
                            torch.tensor([-1.5, -2.0]), beta=0.5)
    # pair 0: 0.5 * ((-1 + 1.5) - (-2 + 1.5)) = 0.5; pair 1: 0.5 * ((-3 + 2) - (-1 + 2)) = -1
    torch.testing.assert_close(loss, torch.tensor([math.log1p(math.exp(-0.5)), math.log1p(math.exp(1.0))]))
    torch.testing.assert_close(rc, torch.tensor([0.25, -0.5]))
    torch.testing.assert_close(rr, torch.tensor([-0.25, 0.5]))
    # policy == reference: log 2 whatever the log-probs
    same = torch.tensor([-7.0])
    torch.testing.assert_close(dpo_loss(same, same - 3, same, same - 3, 0.1)[0], torch.tensor([math.log(2)]))


def test_fit_example_cuts_prompt_start_then_response_end():
    tok = with_chat_tokens(byte_tokenizer())
    ids, mask = encode_example(tok, "p" * 50, "r" * 50)
    short_ids, short_mask = fit_example(ids, mask, 40)
    assert len(short_ids) == 40 and short_mask.count(False) == 20 and short_mask.count(True) == 20
    assert short_ids[:20] == ids[mask.index(True) - 20 : mask.index(True)]  # the prompt's end survives
    assert fit_example(ids, mask, 1000) == (ids, mask)
