"""The chat template: how a conversation becomes one prompt to continue.

A model fine-tuned with `scratchlm sft` has the chat tokens in its tokenizer and gets the template it was
trained on (scratchlm.alignment.chat), its reply ending at <|end|>:

    <system message>\n\n            (when there is one)
    <|user|>\n<message><|end|>\n<|assistant|>\n<reply><|end|>\n
    <|user|>\n<message><|end|>\n<|assistant|>\n

A base model gets plain text it can continue, the reply ending where it starts the next user turn ("\nUser:"):

    <system message>\n\n
    User: <message>\nAssistant: <reply>\n
    User: <message>\nAssistant:
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from scratchlm.alignment.chat import END, has_chat_tokens, render_prompt
from scratchlm.tokenizer import Tokenizer

PLAIN_STOP = ("\nUser:",)
PLAIN_ROLES = {"user": "User", "assistant": "Assistant"}


def format_chat(messages: Iterable[Mapping[str, str]], tokenizer: Tokenizer | None = None) -> tuple[str, tuple[str, ...]]:
    """(prompt text, stop strings) for messages [{"role": "system" | "user" | "assistant", "content": ...}]:
    the chat-token template when `tokenizer` has the chat tokens, the plain one otherwise."""
    messages = list(messages)
    system = ""
    if messages and messages[0]["role"] == "system":
        system, messages = f"{messages[0]['content']}\n\n", messages[1:]
    turns = []
    for message in messages:
        role = message["role"]
        if role == "system":
            raise ValueError("a system message can only come first")
        if role not in PLAIN_ROLES:
            raise ValueError(f"unknown role {role!r}; use system, user or assistant")
        turns.append((role, message["content"]))
    if tokenizer is not None and has_chat_tokens(tokenizer):
        return system + render_prompt(turns), (END,)
    return system + "".join(f"{PLAIN_ROLES[r]}: {text}\n" for r, text in turns) + "Assistant:", PLAIN_STOP
