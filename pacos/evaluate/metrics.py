"""Reference metrics for a model's answers: ROUGE-L, embedding similarity, length, EOS rate, repetition.

ROUGE-L uses the novelty filter's tokenizers, so Chinese is scored on characters ("cjk") instead of
vanishing as in rouge_score. Repetition is what a model that never stops does: the same n-grams again
and again, so the share of an answer's n-grams that repeat an earlier one measures looping directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean
from typing import Any

# The one MiniLM loader lives in pacos.data.embed; re-exported here for `pacos eval` and its users.
from pacos.data.embed import Embedder as Embedder
from pacos.data.embed import embedding_model_dir as embedding_model_dir
from pacos.text.cjk import language_of
from pacos.text.ngrams import distinct_n as distinct_n
from pacos.text.ngrams import repeated_ngram_share as repeated_ngram_share
from pacos.text.ngrams import rouge_l as rouge_l


def reference_metrics(
    answers: Sequence[dict[str, Any]], references: Sequence[str | None], embedder: Embedder | None = None
) -> dict[str, Any]:
    """Per-set numbers for answers ({"text", "finish_reason", "completion_tokens"}) and their references
    (None where a prompt has no reference)."""
    texts = [a["text"] for a in answers]
    scored = [(t, r) for t, r in zip(texts, references, strict=True) if r]
    result: dict[str, Any] = {
        "answers": len(answers),
        "eos_rate": fmean(a["finish_reason"] == "stop" for a in answers) if answers else 0.0,
        "mean_new_tokens": fmean(a["completion_tokens"] for a in answers) if answers else 0.0,
        "mean_chars": fmean(len(t) for t in texts) if texts else 0.0,
        "distinct_2": distinct_n(texts, 2),
        "repeated_4gram_share": fmean(repeated_ngram_share(t) for t in texts) if texts else 0.0,
        "with_reference": len(scored),
    }
    if scored:
        result["rouge_l"] = fmean(rouge_l(t, r) for t, r in scored)
        if embedder is not None:
            result["embedding_similarity"] = fmean(embedder.similarity(*zip(*scored)))
    return result


def prompt_language(record: dict[str, Any]) -> str:
    """ "zh" for a prompt with Chinese characters in it, else "en" (the two languages pacos ships)."""
    return language_of(record["instruction"] + (record.get("input") or ""))
