"""Prompt-lookup drafts for speculative decoding (Saxena's prompt lookup decoding; vLLM's `ngram` method).

Answers that copy their input (rewrites, extraction, a judge quoting the answers it compares, code edits)
repeat spans of the prompt. Where the last few tokens of a sequence occurred before in it, the tokens that
followed them then are a good guess for what follows now: the decoder feeds that guess with the row's
next token, the model scores every guessed position in the same forward, and the guesses that match its
own greedy choices are kept. On a CPU a decode step costs what reading the weights costs, so checking a
few more tokens in it is nearly free and each kept guess saves a step; a wrong guess costs only the
extra positions of one forward. The text is the model's own greedy text: every kept token is its argmax.
"""

from __future__ import annotations

LOOKUP_MAX_NGRAM = 3  # the longest suffix looked up (vLLM's prompt_lookup_max); shorter ones after it
# One repeated token is weak evidence: at batch 8, 1-gram guesses on open-ended answers cost more rows
# than their hits saved (benchmarks/README.md, "Prompt lookup").
LOOKUP_MIN_NGRAM = 2


class NgramIndex:
    """Where each n-gram (n = min_n..max_n) of a growing token sequence last ended, before the newest
    token: a suffix looked up here finds its latest earlier occurrence in O(1)."""

    def __init__(self, max_n: int = LOOKUP_MAX_NGRAM, min_n: int = LOOKUP_MIN_NGRAM) -> None:
        self.max_n, self.min_n = max_n, min_n
        self.tokens: list[int] = []
        self.ends: dict[tuple[int, ...], int] = {}

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            end = len(self.tokens) - 1  # n-grams ending at the token before this one become findable
            for n in range(self.min_n, self.max_n + 1):
                if end - n + 1 >= 0:
                    self.ends[tuple(self.tokens[end - n + 1 : end + 1])] = end
            self.tokens.append(token)

    def draft(self, k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest suffix found."""
        if k <= 0:
            return []
        for n in range(min(self.max_n, len(self.tokens)), self.min_n - 1, -1):
            end = self.ends.get(tuple(self.tokens[-n:]))
            if end is not None:
                return self.tokens[end + 1 : end + 1 + k]
        return []
