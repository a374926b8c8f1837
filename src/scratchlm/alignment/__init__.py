"""Alignment: the chat template, SFT on response tokens, DPO with a cached reference, and GRPO-style policy
gradients on verifiable rewards, all on top of `scratchlm.eval.response_logprobs`."""

from scratchlm.alignment.chat import (
                                      CHAT_TOKENS,
                                      encode_example,
                                      prepare_chat_model,
                                      prompt_formatter,
                                      render_prompt,
                                      resize_token_embeddings,
                                      with_chat_tokens,
)
from scratchlm.alignment.dpo import DPOConfig, dpo, dpo_loss
from scratchlm.alignment.grpo import (
                                      group_advantages,
                                      grpo_clip_loss,
                                      kl_k3,
                                      masked_mean,
                                      masked_normalize,
                                      policy_gradient_loss,
)
from scratchlm.alignment.grpo_loop import GRPOConfig, grpo
from scratchlm.alignment.rewards import ArithmeticTask, answer_reward, format_reward
from scratchlm.alignment.rollout import Rollouts, rollout
from scratchlm.alignment.sft import SFTConfig, sft

__all__ = [
    "CHAT_TOKENS", "ArithmeticTask", "DPOConfig", "GRPOConfig", "Rollouts", "SFTConfig", "answer_reward", "dpo",
    "dpo_loss", "encode_example", "format_reward", "group_advantages", "grpo", "grpo_clip_loss", "kl_k3",
    "masked_mean", "masked_normalize", "policy_gradient_loss", "prepare_chat_model", "prompt_formatter",
    "render_prompt", "resize_token_embeddings", "rollout", "sft", "with_chat_tokens",
]
