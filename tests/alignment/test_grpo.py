"""GRPO utilities and losses against hand-computed values on small tensors, forward and gradient."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.alignment.grpo import (
    aggregate,
    group_advantages,
    grpo_clip_loss,
    kl_k3,
    masked_mean,
    masked_normalize,
    per_token_policy_loss,
    policy_gradient_loss,
)

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = torch.tensor([[True, True, False], [False, False, True]])


def test_masked_mean_and_normalize():
    assert masked_mean(X, M) == pytest.approx((1 + 2 + 6) / 3)
    torch.testing.assert_close(masked_mean(X, M, dim=-1), torch.tensor([1.5, 6.0]))
    torch.testing.assert_close(masked_mean(X, M, dim=0), torch.tensor([1.0, 2.0, 6.0]))
    torch.testing.assert_close(masked_mean(X, torch.zeros_like(M), dim=-1), torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(masked_normalize(X, M, 4.0, dim=-1), torch.tensor([0.75, 1.5]))
    assert masked_normalize(X, M, 2.0) == pytest.approx(4.5)
    torch.testing.assert_close(aggregate(X, M, "masked_mean", 10), torch.tensor([1.5, 6.0]))
    torch.testing.assert_close(aggregate(X, M, "masked_normalize", 10), torch.tensor([0.3, 0.6]))


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    std = math.sqrt(((0.5**2) * 4) / 3)  # unbiased std of (1, 0, 0, 1)
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]) / torch.tensor([std + 1e-6] * 4 + [1e-6] * 4)
    torch.testing.assert_close(group_advantages(rewards, 4, eps=1e-6), expected)
    torch.testing.assert_close(group_advantages(rewards, 4, normalize_std=False), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(rewards, 3)


def test_policy_gradient_loss_and_its_gradient():
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    weights = torch.tensor([2.0, -1.0])
    loss = policy_gradient_loss(logprobs, weights)
    torch.testing.assert_close(loss, torch.tensor([[2.0, 4.0], [-0.5, -0.1]]))
    loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-2.0, -2.0], [1.0, 1.0]]))


def test_grpo_clip_loss_and_gradient_by_hand():
    old = torch.zeros(1, 4)
    # ratios e^x: 1.5 (A>0: clipped to 1.2), 0.5 (A>0: unclipped, below range), 0.5 (A<0: clipped to 0.8), 1.1 (A<0)
    new = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.1]])).requires_grad_()
    adv = torch.tensor([1.0])
    loss_pos, clipped_pos = grpo_clip_loss(new[:, :2], old[:, :2], adv, 0.2)
    torch.testing.assert_close(loss_pos, torch.tensor([[-1.2, -0.5]]))
    assert clipped_pos.tolist() == [[True, False]]
    loss_neg, clipped_neg = grpo_clip_loss(new[:, 2:], old[:, 2:], -adv, 0.2)
    torch.testing.assert_close(loss_neg, torch.tensor([[0.8, 1.1]]))
    assert clipped_neg.tolist() == [[True, False]]
    (loss_pos.sum() + loss_neg.sum()).backward()
    # d/dlogp of -ratio*A = -ratio*A where unclipped; 0 where the clipped (constant) term is taken
    torch.testing.assert_close(new.grad, torch.tensor([[0.0, -0.5, 0.0, 1.1]]))


def test_grpo_clip_on_policy_equals_reinforce_gradient():
    torch.manual_seed(0)
    logprobs = torch.randn(3, 5, requires_grad=True)
    adv = torch.randn(3)
    loss, clipped = grpo_clip_loss(logprobs, logprobs.detach(), adv, 0.2)
    (g_clip,) = torch.autograd.grad(loss.sum(), logprobs)
    (g_pg,) = torch.autograd.grad(policy_gradient_loss(logprobs, adv).sum(), logprobs)
    torch.testing.assert_close(g_clip, g_pg)
    assert not clipped.any()


def test_kl_k3_by_hand_and_unbiased():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.0])
    torch.testing.assert_close(kl_k3(lp, ref), torch.tensor([0.0, math.e - 1 - 1]))
    # E_{x~p}[k3] = KL(p || q) on a categorical distribution (exact expectation, float64)
    p, q = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    expectation = (p * kl_k3(p.log(), q.log())).sum()
    torch.testing.assert_close(expectation, (p * (p / q).log()).sum())
    assert (kl_k3(torch.randn(100), torch.randn(100)) >= 0).all()


def test_per_token_policy_loss_dispatch():
    lp = torch.tensor([[-1.0, -2.0]])
    raw, adv = torch.tensor([3.0]), torch.tensor([0.5])
    torch.testing.assert_close(per_token_policy_loss("no_baseline", lp, raw_rewards=raw, advantages=adv)[0], -3 * lp)
    torch.testing.assert_close(per_token_policy_loss("reinforce_with_baseline", lp, raw_rewards=raw, advantages=adv)[0], -0.5 * lp)
    loss, clipped = per_token_policy_loss("grpo_clip", lp, raw_rewards=raw, advantages=adv, old_logprobs=lp)
    torch.testing.assert_close(loss, torch.tensor([[-0.5, -0.5]]))
    with pytest.raises(ValueError, match="old"):
        per_token_policy_loss("grpo_clip", lp, raw_rewards=raw, advantages=adv)
