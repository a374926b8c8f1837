"""The chat template: special tokens for turns, prompt/response encoding with a response mask, and the
embedding resize that adding tokens to a trained model's vocabulary needs.

    <|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>

The prompt (everything up to and including "<|assistant|>\n") and the response are encoded separately and
concatenated: that is exactly what the model sees at generation time, when the prompt is encoded alone and
the model continues it. The response mask covers the response and its <|end|>, so the model learns to stop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn

from scratchlm.model import TransformerLM
from scratchlm.tokenizer import Tokenizer

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (USER, ASSISTANT, END)
Turn = tuple[str, str]  # (role "user" | "assistant", text)


def has_chat_tokens(tokenizer: Tokenizer) -> bool:
    return all(t in tokenizer.special_ids for t in CHAT_TOKENS)


def with_chat_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer with the chat tokens added as special tokens (new ids after the current vocabulary);
    itself when it already has them. Existing ids do not change, so a trained model's rows stay valid."""
    if has_chat_tokens(tokenizer):
        return tokenizer
    missing = [t for t in CHAT_TOKENS if t not in tokenizer.special_ids]
    return Tokenizer(tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens + missing, tokenizer.pattern)


def render_prompt(turns: str | Sequence[Turn]) -> str:
    """A user message (or a dialogue ending with a user turn) -> the text that asks for the assistant's reply."""
    if isinstance(turns, str):
        turns = [("user", turns)]
    if not turns or turns[-1][0] != "user":
        raise ValueError("a prompt must end with a user turn")
    parts = []
    for role, text in turns:
        if role not in ("user", "assistant"):
            raise ValueError(f"unknown role {role!r} (user or assistant)")
        parts.append(f"{USER if role == 'user' else ASSISTANT}\n{text}{END}\n")
    return "".join(parts) + f"{ASSISTANT}\n"


def encode_example(tokenizer: Tokenizer, prompt: str | Sequence[Turn], response: str) -> tuple[list[int], list[bool]]:
    """(token ids, response mask): prompt tokens False, response tokens and the closing <|end|> True."""
    if not has_chat_tokens(tokenizer):
        raise ValueError("the tokenizer lacks the chat tokens: use with_chat_tokens(tokenizer)")
    prompt_ids = tokenizer.encode(render_prompt(prompt))
    response_ids = tokenizer.encode(response) + [tokenizer.special_ids[END]]
    return prompt_ids + response_ids, [False] * len(prompt_ids) + [True] * len(response_ids)


def prompt_formatter(tokenizer: Tokenizer, style: str = "auto") -> Callable[[str], str] | None:
    """The evaluation prompt format: the chat template (style chat, or auto with chat tokens) or None (plain)."""
    if style not in ("auto", "plain", "chat"):
        raise ValueError(f"prompt style must be auto, plain or chat, got {style!r}")
    if style == "chat" and not has_chat_tokens(tokenizer):
        raise ValueError("prompt style chat needs a tokenizer with the chat tokens (a model after `scratchlm sft`)")
    use_chat = style == "chat" or (style == "auto" and has_chat_tokens(tokenizer))
    return render_prompt if use_chat else None


@torch.no_grad()
def resize_token_embeddings(model: TransformerLM, vocab_size: int, new_ids: Sequence[int] = (),
                            trained_rows: int | None = None) -> TransformerLM:
    """Grow the embedding table and LM head to `vocab_size` rows (in place; returns the model).

    Rows of added tokens, and of `new_ids` already in range (a vocabulary padded past the tokenizer's), start at
    the mean of the trained rows (the first `trained_rows`, default all old rows): a token the model has never
    seen then begins as an average one, with logits near the average logit, rather than as a random vector
    that a random-init scale makes an outlier.
    """
    old = model.config.vocab_size
    if vocab_size < old:
        raise ValueError(f"cannot shrink the vocabulary from {old} to {vocab_size}")
    fresh = sorted(set(range(old, vocab_size)) | {i for i in new_ids if i < old})
    trained = torch.zeros(old, dtype=torch.bool)
    trained[: trained_rows or old] = True
    trained[[i for i in fresh if i < old]] = False
    for module in [model.embed] + ([model.lm_head] if model.lm_head is not None else []):
        weight = module.weight  # (old, d_model)
        grown = weight.new_empty(vocab_size, weight.shape[1])
        grown[:old] = weight
        grown[fresh] = weight[trained.to(weight.device)].mean(dim=0)
        module.weight = nn.Parameter(grown)
        if hasattr(module, "vocab_size"):
            module.vocab_size = vocab_size
        if hasattr(module, "d_out"):
            module.d_out = vocab_size
    model.config = dataclasses.replace(model.config, vocab_size=vocab_size)
    return model


def prepare_chat_model(model: TransformerLM, tokenizer: Tokenizer) -> tuple[TransformerLM, Tokenizer]:
    """Add the chat tokens to the tokenizer and make the model's vocabulary hold them."""
    chat_tokenizer = with_chat_tokens(tokenizer)
    added = [chat_tokenizer.special_ids[t] for t in CHAT_TOKENS if t not in tokenizer.special_ids]
    if added:
        resize_token_embeddings(model, max(model.config.vocab_size, chat_tokenizer.vocab_size), added,
                                trained_rows=tokenizer.vocab_size)
    return model, chat_tokenizer
