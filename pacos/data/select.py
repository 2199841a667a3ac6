"""`pacos data select`: keep the best records by a score, optionally diversity-aware as Deita does.

Scores are numbers under `record["scores"]` (written by `pacos data score` and friends). Records are
ranked best first (highest first, or lowest first for scores such as perplexity), ties in input order.
`top` keeps a fraction of all input records, `min_score`/`max_score` keep those within bounds; both may
be combined (the fraction is still of all input records). With `diverse=COS`, the ranked records are
walked best first and one whose MiniLM cosine with an already selected record exceeds COS is skipped, and
the walk goes on until the budget is filled, so selection does not collapse onto one topic (Deita's
"Repr Filter"). Embeddings are computed lazily, block by block, so a small budget embeds few records.
Selected records keep their input order in the output.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pacos.data.records import Record, type_name
from pacos.errors import PacosError


@dataclass
class Scored:
    records: list[Record]
    scores: list[float]
    unscored: int  # records without the score, dropped (only with drop_unscored)


def score_of(record: Record, key: str, where: str) -> float | None:
    """`record["scores"][key]` as a float; None when absent; a PacosError naming `where` when malformed."""
    scores = record.get("scores")
    if scores is None:
        return None
    if not isinstance(scores, dict):
        raise PacosError(f"{where}: field 'scores': expected an object, got {type_name(scores)}")
    if key not in scores or scores[key] is None:
        return None
    value = scores[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PacosError(f"{where}: field 'scores.{key}': expected a finite number, got {value!r}")
    return float(value)


def read_scored(sources: Sequence[str], key: str, drop_unscored: bool = False) -> Scored:
    """Records of `sources` in order, with their score `key`. A record without it is a one-line error
    naming its file and line, or (with `drop_unscored`) is dropped and counted."""
    from pacos.data.io import Problem, scan

    records: list[Record] = []
    scores: list[float] = []
    unscored = 0
    for source in sources:
        for item in scan(source, require_output=False):
            if isinstance(item, Problem):
                raise PacosError(str(item))
            where, found = item
            for record in found:
                value = score_of(record, key, where)
                if value is None:
                    if drop_unscored:
                        unscored += 1
                        continue
                    known = sorted(record["scores"]) if isinstance(record.get("scores"), dict) else []
                    raise PacosError(
                        f"{where}: no score '{key}' under 'scores' (has: {', '.join(known) or 'none'}); "
                        "score the data first (pacos data score) or pass --drop-unscored"
                    )
                records.append(record)
                scores.append(value)
    return Scored(records, scores, unscored)


@dataclass
class Selection:
    records: list[Record]  # in input order
    report: dict[str, Any]


def select_records(
    records: Sequence[Record],
    scores: Sequence[float],
    *,
    top: float | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    lowest: bool = False,
    diverse: float | None = None,
    fields: Sequence[str] = ("instruction", "input"),
    embedder: Any = None,
    show_progress: bool = False,
    block_size: int = 512,
) -> Selection:
    """Keep the best records by score (see the module docstring)."""
    if top is None and min_score is None and max_score is None:
        raise PacosError("say how many to keep: --top FRACTION, --min SCORE or --max SCORE")
    if top is not None and not 0 < top <= 1:
        raise PacosError(f"--top is a fraction of the records, 0 < top <= 1, got {top:g}")
    if diverse is not None and not -1 <= diverse <= 1:
        raise PacosError(f"--diverse is a cosine between -1 and 1, got {diverse:g}")
    n = len(records)
    ranked = sorted(
        (i for i in range(n) if _within(scores[i], min_score, max_score)),
        key=lambda i: (scores[i] if lowest else -scores[i], i),
    )
    budget = len(ranked) if top is None else min(len(ranked), max(1, math.floor(top * n + 0.5)))
    skipped = 0
    if diverse is None or not ranked:
        chosen = ranked[:budget]
    else:
        from pacos.data.dedup import greedy_keep_first
        from pacos.data.embed import bulk_embedder, embed_records

        embedder = embedder or bulk_embedder()
        with contextlib.ExitStack() as stack:
            advance = _progress_bar(stack, len(ranked)) if show_progress and len(ranked) >= 1000 else None

            def rows(start: int, end: int) -> np.ndarray:
                vectors = embed_records([records[i] for i in ranked[start:end]], fields, embedder)
                if advance is not None:
                    advance(end - start)
                return vectors

            walk = greedy_keep_first(rows, diverse, n=len(ranked), limit=budget, block_size=block_size)
        chosen = [ranked[k] for k in np.flatnonzero(walk.kept[: walk.reached])]
        skipped = walk.reached - len(chosen)
    kept_scores = [scores[i] for i in chosen]
    report = {
        "records_in": n,
        "records_kept": len(chosen),
        "skipped_for_diversity": skipped,
        "outside_bounds": n - len(ranked),
        "order": "lowest first" if lowest else "highest first",
        "top": top,
        "min": min_score,
        "max": max_score,
        "diverse": diverse,
        "budget": budget,
        "kept_score_range": [min(kept_scores), max(kept_scores)] if kept_scores else None,
        "input_score_range": [min(scores), max(scores)] if n else None,
    }
    return Selection([records[i] for i in sorted(chosen)], report)


def _within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _progress_bar(stack: contextlib.ExitStack, total: int) -> Callable[[int], None]:
    """A rich progress bar on stderr over the ranked records (it may stop early: the budget is full)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    bar = stack.enter_context(Progress(*columns, console=Console(stderr=True), transient=True))
    task = bar.add_task("selecting (embedding)", total=total)
    return lambda n: bar.advance(task, n)
