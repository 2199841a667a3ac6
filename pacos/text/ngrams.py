"""Answer-level text measures shared by evaluation and preference rewards: ROUGE-L against a reference
(Chinese on characters, through the novelty filter's tokenizers), distinct-n, and the share of repeated
n-grams, which measures looping directly (a model that never stops says the same n-grams again and again)."""

from __future__ import annotations

from collections.abc import Sequence

from pacos.text.rouge import rouge_l_f1, tokenize


def rouge_l(answer: str, reference: str, tokenizer: str = "cjk") -> float:
    """ROUGE-L F1 of an answer against its reference (the F1 is symmetric)."""
    return rouge_l_f1(tokenize(reference, tokenizer), tokenize(answer, tokenizer))


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int = 2, tokenizer: str = "cjk") -> float:
    """Distinct n-grams over all n-grams of a set of answers (Li et al., 2016): low for repetitive models."""
    grams = [g for text in texts for g in _ngrams(tokenize(text, tokenizer), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_share(text: str, n: int = 4, tokenizer: str = "cjk") -> float:
    """The share of an answer's n-grams that already occurred earlier in it: 0 for fresh text, near 1 for a
    loop."""
    grams = _ngrams(tokenize(text, tokenizer), n)
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams) if grams else 0.0
