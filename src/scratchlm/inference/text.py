"""Token ids to streamed text, with stop strings.

Tokens are byte strings, so a character can be split across tokens and a stop string can span several
tokens. `TextStream` decodes bytes incrementally (a split character waits for its last byte), searches the
text for stop strings after every token (only the tail that a new match could touch), cuts the text before
the first match, and never streams text that could still turn out to be the start of a stop string.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence


class TextStream:
    """One sequence's text. `push` each generated token, `pop` the text that is safe to show."""

    def __init__(self, decode_bytes: Callable[[list[int]], bytes], stop: Sequence[str] = ()):
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self._decode_bytes = decode_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stop = tuple(stop)
        self._longest = max((len(s) for s in self.stop), default=0)
        self.text = ""
        self.sent = 0  # characters handed out by `pop`
        self.stopped = False

    def push(self, token_id: int) -> bool:
        """Append a token's text; True when a stop string is now complete (the text is cut before it)."""
        if self.stopped:
            raise ValueError("the sequence already ended at a stop string")
        start = max(0, len(self.text) - self._longest + 1)  # a new match ends in the new text
        self.text += self._decoder.decode(self._decode_bytes([token_id]))
        hits = [i for s in self.stop if (i := self.text.find(s, start)) >= 0]
        if hits:
            self.text, self.stopped = self.text[: min(hits)], True
        return self.stopped

    def finish(self) -> None:
        """The sequence ended without a stop string: flush a trailing partial character (as U+FFFD)."""
        if not self.stopped:
            self.text += self._decoder.decode(b"", final=True)

    def pop(self, final: bool = False) -> str:
        """Text not handed out yet, except (until `final` or a stop) a tail that begins a stop string."""
        end = len(self.text) if final or self.stopped else len(self.text) - self._held_back()
        out, self.sent = self.text[self.sent : end], max(self.sent, end)
        return out

    def _held_back(self) -> int:
        """Length of the longest end of the text that is a proper prefix of a stop string."""
        for n in range(min(self._longest - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0
