"""The chat template: how a conversation becomes one prompt to continue.

The tokenizer has no chat special tokens yet, so this default is plain text that a base model can continue:

    <system message>\n\n            (when there is one)
    User: <message>\nAssistant: <reply>\n
    User: <message>\nAssistant:

The reply ends where the model starts the next user turn: the stop string "\nUser:". A template with special
tokens (issue 9) replaces this one function.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

STOP = ("\nUser:",)
ROLES = {"user": "User", "assistant": "Assistant"}


def format_chat(messages: Iterable[Mapping[str, str]]) -> tuple[str, tuple[str, ...]]:
    """(prompt text, stop strings) for messages [{"role": "system" | "user" | "assistant", "content": ...}]."""
    parts = []
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role == "system":
            if i != 0:
                raise ValueError("a system message can only come first")
            parts.append(f"{content}\n\n")
        elif role in ROLES:
            parts.append(f"{ROLES[role]}: {content}\n")
        else:
            raise ValueError(f"unknown role {role!r}; use system, user or assistant")
    return "".join(parts) + "Assistant:", STOP
