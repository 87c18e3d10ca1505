"""Generated token ids → the text deltas a client sees, one token at a time.

Three things make this more than `tokenizer.decode` per token:
- Byte-level BPE splits multi-byte UTF-8 characters across tokens, so a token's own decoding may be half
  a character. We decode a short window (the ids since the last emitted boundary, after the ids before
  it for context), emit only the text beyond what that context already gave, and hold back a window
  whose text ends in U+FFFD (an incomplete character) until the next token completes it. The pieces
  joined equal `decode(all ids)`.
- Stop strings: the answer is cut before the first occurrence and never contains it, so text that could
  be the start of a stop string is held back until it is either completed (stop) or ruled out.
- `strip` (chat answers): leading whitespace is dropped and trailing whitespace is held back until more
  text follows, so the streamed answer equals the turn text the chat format stores (`text.strip()`).
"""
from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

INCOMPLETE = "\ufffd"


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = (), strip: bool = False):
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self.tokenizer, self.stop, self.strip = tokenizer, tuple(stop), strip
        self.ids: list[int] = []
        self.context = self.window = 0  # ids[context:window] decoded already; ids[window:] not yet
        self.text = ""                   # the answer so far, including text held back
        self.emitted = 0                 # text[:emitted] has been returned
        self.stopped = False             # a stop string was found; the answer is complete

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _new_text(self, final: bool) -> str:
        """Text of the ids not yet decoded; "" while it ends in an incomplete character (unless final)."""
        before = self._decode(self.ids[self.context:self.window])
        after = self._decode(self.ids[self.context:])
        if len(after) <= len(before) or (after.endswith(INCOMPLETE) and not final):
            return ""
        self.context, self.window = self.window, len(self.ids)
        return after[len(before):]

    def push(self, token_id: int) -> str:
        """Add one generated token; the text that may be shown now (often ""; always once stopped)."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        return self._advance(self._new_text(final=False), final=False)

    def finish(self) -> str:
        """The text still held back, once generation has ended."""
        return "" if self.stopped else self._advance(self._new_text(final=True), final=True)

    def _advance(self, new: str, final: bool) -> str:
        if self.strip and not self.text:
            new = new.lstrip()
        searched_from = max(0, len(self.text) - max((len(s) for s in self.stop), default=0) + 1)
        self.text += new
        hits = [i for s in self.stop if (i := self.text.find(s, searched_from)) >= 0]
        if hits:
            self.stopped, final = True, True
            self.text = self.text[:min(hits)]
        end = len(self.text) if final else len(self.text) - self._stop_prefix()
        if self.strip:
            end = min(end, len(self.text.rstrip()))
        piece, self.emitted = self.text[self.emitted:end], max(self.emitted, end)
        return piece

    def _stop_prefix(self) -> int:
        """Length of the longest end of the text that could begin a stop string."""
        return max((n for s in self.stop for n in range(min(len(s) - 1, len(self.text)), 0, -1)
                    if self.text.endswith(s[:n])), default=0)
