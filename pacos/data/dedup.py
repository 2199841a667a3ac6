"""Near-duplicate removal with Alpaca's own novelty rule, applied to an existing dataset.

Records are taken in order; each is kept iff its ROUGE-L F1 with every record kept before it is <= the
threshold (0.7 in Alpaca), so the first of each group of near-duplicates stays. The comparison uses the
instruction only by default, like Alpaca's generation filter. In Alpaca-style data the same instruction
with a different input is a different task ("Sort these numbers." over many lists), so
`fields=("instruction", "input")` compares instruction and input together instead.
The default tokenizer is "cjk" so that Chinese records are compared at all (rouge_score's own tokenizer
deletes every Chinese character); on text without CJK characters both tokenizers give the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pacos.data.records import Record
from pacos.errors import PacosError
from pacos.generate.novelty import NoveltyFilter

RULE = "near_duplicate"
COMPARABLE_FIELDS = ("instruction", "input", "output")


@dataclass
class DedupResult:
    kept: list[Record]
    rejected: list[Record]
    report: dict[str, Any]


def _text(record: Record, fields: Sequence[str]) -> str:
    # A newline joins the fields: it is a token boundary, so words of two fields never merge.
    return "\n".join(record.get(f) or "" for f in fields)


def dedup_records(
    records: Iterable[Record],
    threshold: float = 0.7,
    tokenizer: str = "cjk",
    fields: Sequence[str] = ("instruction",),
    top_k: int = 1,
    progress: Callable[[Iterable[Record]], Iterable[Record]] | None = None,
    examples: int = 5,
) -> DedupResult:
    """Keep the first of each group of near-duplicates (ROUGE-L F1 > threshold on `fields`).

    Each rejected record gets `_rejected` naming the kept record it collided with: `similar_to` is that
    record's `id` when it has one, else its 0-based position among the input records."""
    fields = tuple(fields)
    unknown = [f for f in fields if f not in COMPARABLE_FIELDS]
    if not fields or unknown:
        raise PacosError(
            f"fields must be some of {', '.join(COMPARABLE_FIELDS)}, got {','.join(fields) or 'nothing'}"
        )
    pool = NoveltyFilter(threshold, tokenizer, top_k=top_k)
    kept: list[Record] = []
    kept_at: dict[int, Record] = {}  # input position -> kept record, to name the one a reject collided with
    rejected: list[Record] = []
    shown: list[dict[str, Any]] = []
    total = 0
    for index, record in enumerate(progress(records) if progress else records):
        total += 1
        verdict = pool.offer(_text(record, fields), key=index)
        if verdict.novel:
            kept.append(record)
            kept_at[index] = record
            continue
        twin_index, score = verdict.most_similar[0]
        twin = kept_at[twin_index]
        similar_to = twin.get("id", twin_index)
        label = f"id {similar_to!r}" if "id" in twin else f"#{twin_index}"
        rejected.append(
            {
                **record,
                "_rejected": {
                    "rule": RULE,
                    "reason": f"ROUGE-L F1 {score:.3f} > {threshold:g} with kept record {label}",
                    "similar_to": similar_to,
                    "similar_instruction": twin.get("instruction", ""),
                    "score": score,
                },
            }
        )
        if len(shown) < examples:
            shown.append(
                {
                    "instruction": (record.get("instruction") or "")[:160],
                    "similar_to": similar_to,
                    "similar_instruction": twin.get("instruction", "")[:160],
                    "score": round(score, 4),
                }
            )
    report = {
        "records_in": total,
        "records_kept": len(kept),
        "records_dropped": len(rejected),
        "rule": RULE,
        "description": (
            f"ROUGE-L F1 > {threshold:g} with an earlier kept record, on {' + '.join(fields)} "
            f"({tokenizer} tokenizer); the first of each group of near-duplicates is kept"
        ),
        "threshold": threshold,
        "tokenizer": tokenizer,
        "fields": list(fields),
        "examples": shown,
    }
    return DedupResult(kept=kept, rejected=rejected, report=report)
