"""Chat template, special tokens and embedding resize."""

from __future__ import annotations

import pytest
import torch

from scratchlm.alignment.chat import (
    ASSISTANT,
    CHAT_TOKENS,
    END,
    encode_example,
    prepare_chat_model,
    prompt_formatter,
    render_prompt,
    resize_token_embeddings,
    with_chat_tokens,
)
from tests.eval.tiny import byte_tokenizer, tiny_model


def test_chat_tokens_are_appended_and_encode_as_single_ids():
    base = byte_tokenizer()
    chat = with_chat_tokens(base)
    assert [chat.special_ids[t] for t in CHAT_TOKENS] == [257, 258, 259] and with_chat_tokens(chat) is chat
    assert chat.encode("hi") == base.encode("hi")  # existing ids do not move
    text = render_prompt("What is 2 + 2?")
    assert text == "<|user|>\nWhat is 2 + 2?<|end|>\n<|assistant|>\n"
    assert chat.encode(text).count(chat.special_ids[END]) == 1


def test_encode_example_masks_exactly_the_response_and_its_end():
    chat = with_chat_tokens(byte_tokenizer())
    ids, mask = encode_example(chat, [("user", "hi"), ("assistant", "hello"), ("user", "2+2?")], "4")
    prompt_ids = chat.encode(render_prompt([("user", "hi"), ("assistant", "hello"), ("user", "2+2?")]))
    assert ids[: len(prompt_ids)] == prompt_ids and not any(mask[: len(prompt_ids)])
    assert ids[len(prompt_ids) :] == chat.encode("4") + [chat.special_ids[END]] and all(mask[len(prompt_ids) :])
    assert chat.decode(ids).endswith(f"{ASSISTANT}\n4{END}")
    with pytest.raises(ValueError, match="chat tokens"):
        encode_example(byte_tokenizer(), "x", "y")
    with pytest.raises(ValueError, match="end with a user turn"):
        render_prompt([("user", "a"), ("assistant", "b")])


def test_prompt_formatter_styles():
    base, chat = byte_tokenizer(), with_chat_tokens(byte_tokenizer())
    assert prompt_formatter(base) is None and prompt_formatter(chat) is render_prompt
    assert prompt_formatter(chat, "plain") is None
    with pytest.raises(ValueError, match="chat tokens"):
        prompt_formatter(base, "chat")


@pytest.mark.parametrize("tie", [False, True])
def test_resize_keeps_old_logits_and_starts_new_rows_at_the_mean(tie):
    model = tiny_model(257, tie=tie)
    ids = torch.randint(0, 257, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids)
    old_embed = model.embed.weight.detach().clone()
    resize_token_embeddings(model, 260)
    assert model.config.vocab_size == 260 and model.embed.weight.shape == (260, 32)
    with torch.no_grad():
        after = model(ids)
    torch.testing.assert_close(after[..., :257], before)
    torch.testing.assert_close(model.embed.weight[257:], old_embed.mean(0).expand(3, -1))
    if not tie:
        assert model.lm_head.weight.shape == (260, 32)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="shrink"):
        resize_token_embeddings(model, 10)


def test_prepare_chat_model_reinitializes_padded_rows_without_growing():
    model, base = tiny_model(300), byte_tokenizer()  # a vocabulary padded past the tokenizer's 257 tokens
    trained_mean = model.embed.weight[:257].detach().mean(0)
    untouched = model.embed.weight[260:].detach().clone()
    model, chat = prepare_chat_model(model, base)
    assert model.config.vocab_size == 300 and chat.vocab_size == 260
    torch.testing.assert_close(model.embed.weight[257:260], trained_mean.expand(3, -1))
    torch.testing.assert_close(model.embed.weight[260:], untouched)
