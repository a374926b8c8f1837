"""response_logprobs / token_logprobs against float64 log_softmax references, forward and backward."""

from __future__ import annotations

import pytest
import torch

from scratchlm.eval.logprobs import pad_batch, response_logprobs, token_logprobs
from tests.eval.tiny import tiny_model


def test_token_logprobs_and_entropy_match_float64_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 50) * 4
    targets = torch.randint(0, 50, (3, 5))
    logprobs, entropy = token_logprobs(logits.bfloat16(), targets)
    ref_logp = torch.log_softmax(logits.bfloat16().double(), -1)
    assert logprobs.dtype == torch.float32
    torch.testing.assert_close(logprobs.double(), ref_logp.gather(-1, targets[..., None]).squeeze(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy.double(), -(ref_logp.exp() * ref_logp).sum(-1), atol=1e-4, rtol=0)
    assert not entropy.requires_grad


def test_response_logprobs_forward_and_gradient_match_reference():
    model = tiny_model(40, dtype=torch.float64, seed=1)
    ids = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[0, 5:], mask[1, 1:7], mask[2, 11] = True, True, True
    logprobs, entropy = response_logprobs(model, ids, mask)
    assert logprobs.shape == entropy.shape == (3, 12)
    assert (logprobs[~mask] == 0).all() and (entropy[~mask] == 0).all()
    ours = logprobs.sum()
    (grad_ours,) = torch.autograd.grad(ours, model.embed.weight)

    reference = torch.log_softmax(model(ids)[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (3, 11)
    ref_sum = (reference * mask[:, 1:]).sum()
    (grad_ref,) = torch.autograd.grad(ref_sum, model.embed.weight)
    torch.testing.assert_close(logprobs[:, 1:][mask[:, 1:]], reference[mask[:, 1:]])
    torch.testing.assert_close(grad_ours, grad_ref)


def test_right_padding_does_not_change_a_rows_logprobs():
    model = tiny_model(40, seed=3)
    short, long = [5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9]
    ids, mask = pad_batch([short, long], [[False, True, True, True], [False] * 4 + [True] * 5])
    assert ids.shape == (2, 9) and mask[0, 4:].sum() == 0
    with torch.no_grad():
        batched, _ = response_logprobs(model, ids, mask)
        alone, _ = response_logprobs(model, ids[:1, :4], mask[:1, :4])
    torch.testing.assert_close(batched[0, :4], alone[0], atol=1e-5, rtol=1e-5)


def test_mask_at_column_zero_is_rejected():
    model = tiny_model(40)
    with pytest.raises(ValueError, match="column 0"):
        response_logprobs(model, torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool))
