"""The chat template the server and `scratchlm chat` use: the SFT template for fine-tuned models, plain text else."""

from __future__ import annotations

import pytest

from scratchlm.alignment.chat import END, render_prompt, with_chat_tokens
from scratchlm.serve.chat_format import format_chat
from scratchlm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def base_tokenizer(tiny_run) -> Tokenizer:
    return tiny_run[2]


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a color."}]


def test_fine_tuned_models_get_the_template_they_were_trained_on(base_tokenizer):
    chat_tokenizer = with_chat_tokens(base_tokenizer)
    text, stop = format_chat(CONVERSATION, chat_tokenizer)
    assert text == "Be brief.\n\n" + render_prompt([("user", "Hi"), ("assistant", "Hello."), ("user", "Name a color.")])
    assert stop == (END,)
    # the markers are single special tokens, as in SFT's encoding
    ids = chat_tokenizer.encode(text)
    assert ids[-2:] == [chat_tokenizer.special_ids["<|assistant|>"], chat_tokenizer.encode("\n")[0]]


def test_base_models_get_plain_text(base_tokenizer):
    for tokenizer in (None, base_tokenizer):
        text, stop = format_chat(CONVERSATION, tokenizer)
        assert text == "Be brief.\n\nUser: Hi\nAssistant: Hello.\nUser: Name a color.\nAssistant:"
        assert stop == ("\nUser:",)


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "system message can only come first"),
    ([{"role": "tool", "content": "a"}], "unknown role 'tool'"),
])
def test_bad_conversations_are_rejected(messages, message):
    with pytest.raises(ValueError, match=message):
        format_chat(messages)
