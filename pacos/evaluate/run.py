"""`pacos eval --model M --prompts FILE`: answers for an instruction set, and metrics against references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pacos.data.io import read_records, write_records
from pacos.evaluate.answers import AnswerCache, Decoding, answer_records
from pacos.evaluate.metrics import Embedder, reference_metrics
from pacos.fileio import write_json
from pacos.models import cache_dir


def evaluate_prompts(
    model: str,
    prompts: str,
    out_dir: str | Path,
    decoding: Decoding | None = None,
    *,
    served_model: str | None = None,
    template: str | None = None,
    embeddings: bool = True,
    cache_path: str | Path | None = None,
) -> dict[str, Any]:
    """Answer every record of `prompts` (its `output`, where present, is the reference) and write
    `answers.jsonl` and `metrics.json` into `out_dir`; returns the metrics."""
    decoding = decoding or Decoding()
    records = read_records(prompts, require_output=False)
    cache = AnswerCache(cache_path or cache_dir() / "eval" / "answers.jsonl")
    try:
        answers, generated = answer_records(
            model, records, decoding, served_model=served_model, template=template, cache=cache
        )
    finally:
        cache.close()
    references = [r.get("output") or None for r in records]
    metrics = reference_metrics(answers, references, Embedder() if embeddings and any(references) else None)
    metrics = {
        "model": model,
        "prompts": prompts,
        "decoding": vars(decoding),
        "generated": generated,
        **metrics,
    }
    out = Path(out_dir)
    rows = [
        {
            **record,
            "answer": a["text"],
            "finish_reason": a["finish_reason"],
            "new_tokens": a["completion_tokens"],
        }
        for record, a in zip(records, answers, strict=True)
    ]
    write_records(rows, out / "answers.jsonl")
    write_json(out / "metrics.json", metrics)
    return metrics
