"""`pacos data score`: quality scores on every record, for `pacos data select --by KEY` (and, in pairs.py,
`pacos pairs`: a model's own answers scored and paired for preference training).

Two kinds of score, both stored as numbers under `record["scores"]` (how each was obtained goes in
`record["scoring"]`):

- `judge`: an LLM judge (any OpenAI-compatible endpoint, or a local model through the pacos engine)
  rates the output's helpfulness and accuracy for the instruction from 1 to 5, AlpaGasus-style, with our
  own prompt (a Chinese one for Chinese records). Where the judge returns logprobs and its reply starts
  with a rating digit, the score is the expected rating over the tokens "1".."5" (their probabilities
  renormalised); otherwise the digit it wrote. A reply with no rating (small judges often start "I'm
  sorry, ...") is read from the rating tokens among its first token's alternatives when they hold at least
  `first_token_min_mass` of the probability ("first_token"), else recorded as unparseable.
  Every judgment is appended to a cache as soon as it arrives, keyed by the judge's identity, the
  prompt text and the decoding settings: a rerun makes no calls for what is there, and a killed run
  continues where it stopped.
- cheap signals, no judge: `instruction_words`, `input_words`, `output_words` (whitespace words, every
  CJK character counting as one word, since Chinese has no spaces); with a reference model, `ppl`
  (perplexity of the output given the rendered prompt, response tokens + EOS only, as training's
  validation loss) and `ifd` (Cherry LLM's instruction-following difficulty, Li et al. 2023:
  PPL(output | prompt) / PPL(output alone), over the same output tokens; > 1 means the instruction does
  not help the model predict the answer), with `ppl_alone` beside it. Per-record losses are cached too.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pacos.data.records import Record
from pacos.errors import PacosError
from pacos.fileio import KeyedCache
from pacos.score.common import QuietScoreProgress, ScoreProgress, ScoreTally, apply_scores
from pacos.score.judge import (
    RatingSettings,
    expected_rating,
    judge_records,
    judgment_key,
    parse_rating,
    rating_prompt,
    read_verdict,
)
from pacos.score.signals import RefSettings, length_signals, reference_signals

__all__ = [
    "QuietScoreProgress",
    "RatingSettings",
    "RefSettings",
    "ScoreProgress",
    "expected_rating",
    "judgment_key",
    "length_signals",
    "parse_rating",
    "parse_signals",
    "rating_prompt",
    "read_verdict",
    "score_records",
]  # fmt: skip

SIGNALS = ("len", "ppl", "ifd")


@contextmanager
def _cache(path: Path) -> Iterator[KeyedCache]:
    cache = KeyedCache(path)
    try:
        yield cache
    finally:
        cache.close()


def parse_signals(spec: str | None) -> list[str]:
    names = [s.strip() for s in (spec or "").split(",") if s.strip()]
    unknown = [s for s in names if s not in SIGNALS]
    if unknown:
        raise PacosError(f"--signals: unknown signal '{unknown[0]}' (choose from {', '.join(SIGNALS)})")
    return names


def score_records(
    records: list[Record],
    *,
    judge: RatingSettings | None = None,
    signals: list[str] | tuple[str, ...] = (),
    ref: RefSettings | None = None,
    cache_dir: str | Path | None = None,
    progress: QuietScoreProgress | None = None,
) -> dict[str, Any]:
    """Score `records` in place and return the summary. `cache_dir` holds judgments.jsonl and
    signals.jsonl (append-only: the progress of a killed run; default $PACOS_CACHE/score)."""
    from pacos.models import cache_dir as default_cache

    if not judge and not signals:
        raise PacosError("nothing to score: pass --judge and/or --signals len,ppl,ifd")
    if {"ppl", "ifd"} & set(signals) and ref is None:
        raise PacosError("--signals ppl/ifd need a reference model: pass --ref-model")
    for number, record in enumerate(records, start=1):
        if not isinstance(record.get("output"), str):
            raise PacosError(f"record {number}: field 'output': required field is missing")
    folder = Path(cache_dir) if cache_dir else default_cache() / "score"
    tally = ScoreTally(records=len(records))
    started = time.monotonic()
    if "len" in signals:
        for record in records:
            apply_scores(record, length_signals(record), {})
    if judge:
        with _cache(folder / "judgments.jsonl") as cache:
            judge_records(records, judge, cache, tally, progress)
    if ref is not None and {"ppl", "ifd"} & set(signals):
        with _cache(folder / "signals.jsonl") as cache:
            reference_signals(records, ref, cache, tally, progress, ifd="ifd" in signals)
    for record in records:
        if not record.get("scoring"):
            record.pop("scoring", None)
    tally.seconds = time.monotonic() - started
    return summarize(records, tally, judge, ref)


def _describe(values: list[float]) -> dict[str, float]:
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return {"n": 0}
    q = statistics.quantiles(finite, n=10, method="inclusive") if len(finite) > 1 else [finite[0]] * 9
    return {"n": len(finite), "mean": round(statistics.fmean(finite), 4), "p10": round(q[0], 4),
            "median": round(statistics.median(finite), 4), "p90": round(q[8], 4),
            "min": round(finite[0], 4), "max": round(finite[-1], 4)}  # fmt: skip


def summarize(
    records: list[Record], tally: ScoreTally, judge: RatingSettings | None, ref: RefSettings | None
) -> dict[str, Any]:
    keys: dict[str, None] = {}
    for record in records:
        keys.update(dict.fromkeys(record.get("scores") or {}))
    distributions = {
        k: _describe(
            [r["scores"][k] for r in records if isinstance((r.get("scores") or {}).get(k), float | int)]
        )
        for k in keys
    }
    summary: dict[str, Any] = {"records": tally.records, "seconds": round(tally.seconds, 2),
                               "distributions": distributions}  # fmt: skip
    if judge:
        judged = [r["scores"]["judge"] for r in records if "judge" in r.get("scores", {})]
        ratings = Counter(min(5, max(1, math.floor(v + 0.5))) for v in judged)
        summary["judge"] = {
            **asdict(judge),
            "calls": tally.calls,
            "cache_hits": tally.cache_hits,
            "failed": dict(tally.failed),
            "read_from": dict(tally.read_from),
            "unparseable": tally.read_from.get("unparseable", 0),
            "ratings": {str(k): ratings.get(k, 0) for k in range(1, 6)},  # rounded to the nearest rating
        }
    if ref:
        summary["reference"] = {**asdict(ref), "cache_hits": tally.signal_hits, "too_long": tally.too_long}
    return summary
