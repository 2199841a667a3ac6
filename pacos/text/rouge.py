"""Alpaca's ROUGE-L novelty filter, exact and fast.

Stanford Alpaca (after Self-Instruct) keeps a generated instruction only if its ROUGE-L F1 against every
seed instruction and every instruction kept so far is <= 0.7. The reference, `rouge_score`'s
`RougeScorer(["rougeL"])._score_lcs(new_tokens, pool_tokens)`, fills an O(m * n) Python table for every
pool item: hours for a 52K pool. This module makes the same decisions, with the same float scores:

- tokens become integer ids; an inverted index (token id -> pool items and counts) gives, for a
  candidate, every pool item's multiset token overlap O in a few vectorised numpy passes;
- LCS <= O, so 2 * O / (m + n) bounds the F1 from above; only items whose bound can still beat the
  k-th best exact score are scored, in descending bound order, and the search stops when none can;
- an exact score is a bit-parallel LCS (Hyyro's: Python ints as bit vectors, one add, one subtract and
  a few logic ops per pool token) followed by the reference's own float expression.
"""

from __future__ import annotations

import math
import re
from array import array
from bisect import insort
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pacos.errors import PacosError
from pacos.text.cjk import CJK_CHARS

TOKENIZERS = ("rouge", "cjk")

# rouge_score's default tokenizer lower-cases, turns every run outside [a-z0-9] into a space and keeps
# the [a-z0-9]+ tokens: that is exactly the maximal [a-z0-9] runs of the lower-cased text.
_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")
# Every CJK character (pacos.text.cjk) is a token of its own: these scripts do not separate words.
_CJK_TOKEN = re.compile(f"[a-z0-9]+|[{CJK_CHARS}]")

# Bounds are compared with this much slack, so that float rounding in a bound can never prune a pool
# item whose exact score (itself a rounded float) reaches the cut-off.
_EPSILON = 1e-9
_MAX_COUNT = 0xFFFF  # per-posting counts are uint16; a saturated count stands for "at least this many"


def tokenize(text: str, tokenizer: str = "rouge") -> list[str]:
    """ROUGE tokens. "rouge": exactly rouge_score's default tokenizer without stemming (Chinese and other
    non-Latin scripts vanish). "cjk": the same, plus every CJK ideograph, kana or hangul character as a
    token of its own; on text without such characters the two are identical."""
    if tokenizer == "rouge":
        return _ROUGE_TOKEN.findall(text.lower())
    if tokenizer == "cjk":
        return _CJK_TOKEN.findall(text.lower())
    raise PacosError(f"unknown tokenizer '{tokenizer}' (expected one of: {', '.join(TOKENIZERS)})")


def _f1(lcs: int, new_len: int, other_len: int) -> float:
    # rouge_score's _score_lcs and scoring.fmeasure, operation for operation, so the float is the same.
    precision = lcs / other_len
    recall = lcs / new_len
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _position_masks(tokens: Sequence[Hashable]) -> dict[Hashable, int]:
    masks: dict[Hashable, int] = {}
    for i, token in enumerate(tokens):
        masks[token] = masks.get(token, 0) | (1 << i)
    return masks


def _lcs_length(masks: dict[Any, int], length: int, other: Sequence[Any]) -> int:
    """LCS of the sequence behind `masks` (token -> bit set of its positions) and `other`, bit-parallel:
    a zero bit of `v` marks a position of the first sequence that the LCS so far uses."""
    full = (1 << length) - 1
    v = full
    get = masks.get
    for token in other:
        u = get(token)
        if u:
            u &= v
            v = ((v + u) | (v - u)) & full
    return length - v.bit_count()


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence of two token sequences (bit-parallel)."""
    return _lcs_length(_position_masks(a), len(a), b) if a else 0


def rouge_l_f1(new_tokens: Sequence[str], other_tokens: Sequence[str]) -> float:
    """ROUGE-L F1 of a new instruction against a pool instruction, the same float as rouge_score's
    `_score_lcs(new_tokens, other_tokens).fmeasure` (0.0 when either side has no tokens)."""
    if not new_tokens or not other_tokens:
        return 0.0
    lcs = _lcs_length(_position_masks(new_tokens), len(new_tokens), other_tokens)
    return _f1(lcs, len(new_tokens), len(other_tokens))


@dataclass(frozen=True)
class NoveltyVerdict:
    """The outcome of checking one candidate against the pool.

    `max_score` is the highest ROUGE-L F1 with any pool item (0.0 for an empty pool or a candidate
    without tokens); `most_similar` holds up to top_k pool items that share at least one token with the
    candidate, as (key, score), best first, ties in pool order. A rejected candidate's first entry is
    the item it collided with."""

    novel: bool
    max_score: float
    most_similar: list[tuple[Any, float]]


class NoveltyFilter:
    """A growing pool of instructions and Alpaca's rule: a candidate is novel iff its ROUGE-L F1 with
    every pool item is <= threshold. Decisions and scores equal rouge_score's, float for float."""

    def __init__(self, threshold: float = 0.7, tokenizer: str = "rouge", top_k: int = 5) -> None:
        if not isinstance(threshold, (int, float)) or math.isnan(threshold) or not 0 <= threshold <= 1:
            raise PacosError(f"novelty threshold must be between 0 and 1, got {threshold}")
        if tokenizer not in TOKENIZERS:
            raise PacosError(f"unknown tokenizer '{tokenizer}' (expected one of: {', '.join(TOKENIZERS)})")
        if not isinstance(top_k, int) or top_k < 1:
            raise PacosError(f"top_k must be a positive integer, got {top_k}")
        self.threshold = float(threshold)
        self.tokenizer = tokenizer
        self.top_k = top_k
        self._vocab: dict[str, int] = {}
        # Per token id: the pool items that hold it and how often (uint16, saturating). array.array grows
        # in place at ~1.1x and costs 6 bytes a posting; numpy reads it without a copy.
        self._post_items: list[array] = []
        self._post_counts: list[array] = []
        self._tokens = array("I")  # every pool item's token ids, one after another
        self._starts = array("Q", [0])  # item i's tokens are _tokens[_starts[i]:_starts[i + 1]]
        self._lengths = array("I")
        self._keys: list[Any] = []

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, text: str, key: Any = None) -> int:
        """Put `text` into the pool unconditionally (seeds, records re-loaded on resume); returns its
        position in the pool. `key` (default: the text) is what `most_similar` reports for it."""
        return self._add(tokenize(text, self.tokenizer), text if key is None else key)

    def check(self, text: str) -> NoveltyVerdict:
        """Score `text` against the pool without changing it."""
        return self._check(tokenize(text, self.tokenizer))

    def offer(self, text: str, key: Any = None) -> NoveltyVerdict:
        """Check `text`, and add it to the pool when it is novel."""
        tokens = tokenize(text, self.tokenizer)
        verdict = self._check(tokens)
        if verdict.novel:
            self._add(tokens, text if key is None else key)
        return verdict

    # --- internals --------------------------------------------------------------------------------

    def _add(self, tokens: list[str], key: Any) -> int:
        item = len(self._keys)
        vocab = self._vocab
        ids = [vocab.get(token) for token in tokens]
        if None in ids:
            for i, token in enumerate(tokens):
                if ids[i] is None:
                    tid = vocab.get(token)
                    if tid is None:
                        tid = vocab[token] = len(vocab)
                        self._post_items.append(array("I"))
                        self._post_counts.append(array("H"))
                    ids[i] = tid
        post_items, post_counts = self._post_items, self._post_counts
        for tid, count in Counter(ids).items():
            post_items[tid].append(item)
            post_counts[tid].append(count if count < _MAX_COUNT else _MAX_COUNT)
        self._tokens.extend(ids)
        self._starts.append(len(self._tokens))
        self._lengths.append(len(ids))
        self._keys.append(key)
        return item

    def _overlaps(self, counts: dict[int, int]) -> np.ndarray:
        """Per pool item, the multiset overlap: the sum over tokens t of min(candidate count, item count)."""
        single, multiple, weights = [], [], []
        for tid, count in counts.items():
            items = np.frombuffer(self._post_items[tid], dtype=np.uint32)
            if count == 1:  # most tokens: min(1, item count) is 1, no counts to read
                single.append(items)
                continue
            multiple.append(items)
            item_counts = np.frombuffer(self._post_counts[tid], dtype=np.uint16)
            if count >= _MAX_COUNT:  # a saturated item count may hide as many as the candidate has
                weights.append(np.where(item_counts == _MAX_COUNT, count, item_counts))
            else:
                weights.append(np.minimum(item_counts, count))
        # Only copies leave this function: the pool's arrays must not be exporting buffers when it grows.
        size = len(self._keys)
        overlap = np.bincount(np.concatenate(single), minlength=size) if single else np.zeros(size, np.int64)
        if multiple:
            overlap += np.bincount(np.concatenate(multiple), np.concatenate(weights), minlength=size).astype(
                np.int64
            )
        return overlap

    def _check(self, tokens: list[str]) -> NoveltyVerdict:
        best = self._search(tokens) if tokens and self._keys else []
        max_score = best[0][0] if best else 0.0
        return NoveltyVerdict(
            novel=max_score <= self.threshold,
            max_score=max_score,
            most_similar=[(self._keys[item], score) for score, item in best],
        )

    def _search(self, tokens: list[str]) -> list[tuple[float, int]]:
        """The top_k pool items by exact score (ties: pool order), among those sharing a token."""
        vocab = self._vocab
        m = len(tokens)
        ids = [vocab.get(token, -1) for token in tokens]
        counts = Counter(ids)
        counts.pop(-1, None)  # tokens outside the pool's vocabulary match nothing
        if not counts:
            return []
        overlap = self._overlaps(counts)
        hits = np.flatnonzero(overlap)
        overlap = overlap[hits]
        # The bound is the reference's own float expression with LCS = overlap: LCS <= overlap, numpy's
        # float64 operations round exactly like Python's, and the F1 grows with the LCS (a step of one
        # moves it by 2 / (m + n), far beyond rounding), so no exact score can exceed its bound.
        precision = overlap / np.frombuffer(self._lengths, dtype=np.uint32)[hits]
        recall = overlap / m
        bounds = 2 * precision * recall / (precision + recall)
        del overlap, precision, recall

        masks = _position_masks(ids)
        masks.pop(-1, None)
        pool_tokens, starts, pool_lengths = self._tokens, self._starts, self._lengths
        k, threshold = self.top_k, self.threshold
        ranked: list[tuple[float, int]] = []  # (-score, item): best first, ties by pool order

        def exact(item: int) -> tuple[float, int]:
            lcs = _lcs_length(masks, m, pool_tokens[starts[item] : starts[item + 1]])
            return -_f1(lcs, m, pool_lengths[item]), item

        def survivors(hits: np.ndarray, bounds: np.ndarray) -> np.ndarray:
            # Items that could still enter the top k: a higher bound than the k-th best, or the same
            # bound and an earlier place in the pool. Until a collision is certain, items within a
            # margin of the threshold are scored regardless, so the keep/drop decision never hangs on
            # the last bit of a float.
            kth, kth_item = -ranked[-1][0], ranked[-1][1]
            keep = (bounds > kth) | ((bounds == kth) & (hits < kth_item))
            if -ranked[0][0] <= threshold:
                keep |= bounds > threshold - _EPSILON
            return keep

        # First the items with the highest bounds, in a few vectorised rounds: they set a k-th best score
        # that prunes most of the rest.
        first = k
        while hits.size > max(first, 256):
            top = np.argpartition(bounds, hits.size - first)[hits.size - first :]
            ranked.extend(exact(item) for item in hits[top].tolist())
            ranked.sort()
            del ranked[k:]
            rest = np.ones(hits.size, dtype=bool)
            rest[top] = False
            hits, bounds = hits[rest], bounds[rest]
            if len(ranked) == k:
                keep = survivors(hits, bounds)
                hits, bounds = hits[keep], bounds[keep]
            if hits.size <= 1024:
                break
            first *= 4  # the bounds are loose here: take bigger steps
        # Then one by one in descending bound order (ties: pool order), until nothing left can enter.
        order = np.argsort(-bounds, kind="stable")
        hits, bounds = hits[order], bounds[order]
        for item, bound in zip(hits.tolist(), bounds.tolist()):
            if len(ranked) == k:
                kth, kth_item = -ranked[-1][0], ranked[-1][1]
                if (bound < kth or (bound == kth and item > kth_item)) and (
                    -ranked[0][0] > threshold or bound <= threshold - _EPSILON
                ):
                    break
            entry = exact(item)
            if len(ranked) < k:
                insort(ranked, entry)
            elif entry < ranked[-1]:
                insort(ranked, entry)
                ranked.pop()
        return [(-negative, item) for negative, item in ranked]
