"""Tokens to text, one token at a time, as a stream must show it.

- Never half a character: byte-fallback tokens (Chinese, emoji) decode to U+FFFD until the character is
  complete, so such text waits for the next token.
- Never a space lost: SentencePiece drops a leading space when a token is decoded alone, so each step
  decodes a short window that starts a few tokens back (the method of TGI and vLLM).
- Never part of a stop string: text that could be the start of a stop string is held back until it is
  clearly not one, so a stream never shows text that the final answer cuts (llama.cpp #10914).
"""

from __future__ import annotations

from typing import Any


class TextStream:
    def __init__(self, tokenizer: Any, stop: list[str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.stop = list(stop or [])
        self.ids: list[int] = []
        self.prefix_offset = 0  # the window starts here: context for spacing
        self.read_offset = 0  # text up to here has been turned into characters
        self.held = ""  # decoded, not shown yet: it may begin a stop string
        self.text = ""  # everything shown so far

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _new_characters(self, final: bool) -> str:
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        window = self._decode(self.ids[self.prefix_offset :])
        if len(window) > len(before) and (final or not window.endswith("\ufffd")):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return window[len(before) :]
        return ""

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token; returns (text to show now, whether a stop string ended the answer)."""
        self.ids.append(token_id)
        return self._emit(self._new_characters(final=False))

    def flush(self) -> str:
        """The rest of the text once generation ends for another reason (EOS, length)."""
        shown, _ = self._emit(self._new_characters(final=True))
        rest, self.held = self.held, ""
        self.text += rest
        return shown + rest

    def _emit(self, new: str) -> tuple[str, bool]:
        pending = self.held + new
        hits = [i for i in (pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            shown, self.held = pending[: min(hits)], ""
            self.text += shown
            return shown, True
        keep = max((k for s in self.stop for k in range(1, len(s)) if pending.endswith(s[:k])), default=0)
        shown, self.held = pending[: len(pending) - keep], pending[len(pending) - keep :]
        self.text += shown
        return shown, False
