"""Near-duplicate removal: Alpaca's own novelty rule (ROUGE-L), or MiniLM embedding cosine (semantic mode).

Records are taken in order; each is kept iff its ROUGE-L F1 with every record kept before it is <= the
threshold (0.7 in Alpaca), so the first of each group of near-duplicates stays. The comparison uses the
instruction only by default, like Alpaca's generation filter. In Alpaca-style data the same instruction
with a different input is a different task ("Sort these numbers." over many lists), so
`fields=("instruction", "input")` compares instruction and input together instead.
The default tokenizer is "cjk" so that Chinese records are compared at all (rouge_score's own tokenizer
deletes every Chinese character); on text without CJK characters both tokenizers give the same tokens.

The semantic mode keeps the same order semantics with all-MiniLM-L6-v2 cosine instead of ROUGE-L, so it
also catches paraphrases that share few words ("How do I bake bread at home?" / "What is the way to make a
loaf of bread in my kitchen?"). Search is exact (blocked matrix products) up to ~100K records, and a faiss
HNSW index beyond (optional: pacos[ann]).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pacos.data.records import Record
from pacos.errors import PacosError
from pacos.text.rouge import NoveltyFilter

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


def check_fields(fields: Sequence[str]) -> tuple[str, ...]:
    fields = tuple(fields)
    unknown = [f for f in fields if f not in COMPARABLE_FIELDS]
    if not fields or unknown:
        raise PacosError(
            f"fields must be some of {', '.join(COMPARABLE_FIELDS)}, got {','.join(fields) or 'nothing'}"
        )
    return fields


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
    fields = check_fields(fields)
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


# --- semantic mode: MiniLM cosine --------------------------------------------------------------------

EXACT_LIMIT = 100_000  # above this many records, "auto" uses an approximate index (faiss HNSW)
INDEXES = ("auto", "exact", "hnsw")


@dataclass
class Greedy:
    """Keep-first decisions over vectors in order: `kept[i]`, and for a dropped item the kept item it is most
    similar to (`twin[i]`, -1 when kept) with that cosine (`score[i]`). Items after `limit` kept ones are
    not reached (`reached` is how many were decided)."""

    kept: np.ndarray
    twin: np.ndarray
    score: np.ndarray
    reached: int


def _faiss_index(dim: int) -> Any:
    try:
        import faiss
    except ImportError:
        raise PacosError(
            "the approximate index needs faiss-cpu: pip install 'pacos[ann]' (or faiss-cpu), or use the "
            "exact search (--index exact; slower above ~100K records)"
        ) from None
    index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    index.hnsw.efSearch = 64
    return index


def greedy_keep_first(
    vectors: np.ndarray | Callable[[int, int], np.ndarray],
    threshold: float,
    n: int | None = None,
    *,
    limit: int | None = None,
    index: str = "exact",
    block_size: int = 1024,
    kept_chunk: int = 16_384,
) -> Greedy:
    """Walk the unit vectors in order; keep one iff its cosine with every vector kept before it is <=
    `threshold`, until `limit` are kept.

    Exact search: a block of candidates against all kept vectors is one matrix product (in chunks of
    `kept_chunk` kept vectors, to bound memory), then the block is walked one by one against the kept
    members of the same block. `index="hnsw"` asks a faiss HNSW index of the kept vectors for each
    candidate's nearest kept vector instead (approximate: a near-duplicate can be missed). `vectors` may be
    a function (start, end) -> rows, so that a caller can embed lazily, block by block.
    Ties: the twin is the earliest kept vector with the highest cosine (exact search). Cosines are capped
    at 1, so float rounding never puts identical texts above a threshold of 1."""
    rows = (lambda s, e: vectors[s:e]) if isinstance(vectors, np.ndarray) else vectors
    if n is None:
        if not isinstance(vectors, np.ndarray):
            raise ValueError("n is required when vectors is a function")
        n = len(vectors)
    kept = np.zeros(n, dtype=bool)
    twin = np.full(n, -1, dtype=np.int64)
    score = np.zeros(n, dtype=np.float32)
    pool: np.ndarray | None = None  # kept vectors, in order, preallocated
    pool_ids = np.zeros(n, dtype=np.int64)  # their input positions
    count = 0
    ann = None
    start = 0
    while start < n and (limit is None or count < limit):
        end = min(n, start + block_size)
        block = np.ascontiguousarray(rows(start, end), dtype=np.float32)
        if pool is None:
            pool = np.zeros((n if index == "exact" else 0, block.shape[1]), dtype=np.float32)
            ann = _faiss_index(block.shape[1]) if index == "hnsw" else None
        size = end - start
        best = np.full(size, -np.inf, dtype=np.float32)
        best_at = np.full(size, -1, dtype=np.int64)
        if count and ann is not None:
            found, where = ann.search(block, 1)
            hit = where[:, 0] >= 0  # faiss answers -1 where it found nothing
            best[hit], best_at[hit] = np.minimum(found[hit, 0], 1.0), pool_ids[where[hit, 0]]
        elif count:
            for c in range(0, count, kept_chunk):
                sims = block @ pool[c : min(count, c + kept_chunk)].T
                arg = sims.argmax(axis=1)  # the first of equal maxima: the earliest kept
                top = np.minimum(sims[np.arange(size), arg], 1.0)  # a text with itself: 1.0000001
                better = top > best  # strict: an earlier chunk wins a tie
                best[better] = top[better]
                best_at[better] = pool_ids[c + arg[better]]
        inner = np.minimum(block @ block.T, 1.0)
        local: list[int] = []  # block offsets kept so far
        for i in range(size):
            if local:
                sims = inner[i, local]
                j = int(sims.argmax())
                if sims[j] > best[i]:  # strict: a kept vector of an earlier block wins a tie
                    best[i], best_at[i] = sims[j], start + local[j]
            if best[i] > threshold:
                twin[start + i], score[start + i] = best_at[i], best[i]
                continue
            kept[start + i] = True
            local.append(i)
            if limit is not None and count + len(local) >= limit:
                end = start + i + 1
                break
        new = np.asarray(local, dtype=np.int64)
        if ann is not None:
            if len(new):
                ann.add(block[new])
        else:
            pool[count : count + len(new)] = block[new]
        pool_ids[count : count + len(new)] = start + new
        count += len(new)
        start = end
    return Greedy(kept=kept, twin=twin, score=score, reached=start)


def semantic_dedup_records(
    records: Sequence[Record],
    threshold: float = 0.9,
    fields: Sequence[str] = ("instruction", "input"),
    embedder: Any = None,
    index: str = "auto",
    block_size: int = 1024,
    show_progress: bool = False,
    examples: int = 5,
) -> DedupResult:
    """Keep the first of each group of semantic near-duplicates: a record is kept iff the MiniLM cosine of
    its `fields` with every record kept before it is <= `threshold`.

    An exact duplicate of an earlier record (`pacos data clean`'s rule: instruction, input and output equal
    after Unicode, case and whitespace normalisation) is always dropped, as rule `exact_duplicate`, whatever
    the threshold; it is not embedded. Rejected records carry `_rejected` as in the ROUGE-L mode."""
    import time

    from pacos.data.clean import DUPLICATE_RULE, dedup_key
    from pacos.data.embed import MODEL_NAME, bulk_embedder, embed_records

    fields = check_fields(fields)
    if index not in INDEXES:
        raise PacosError(f"index must be one of {', '.join(INDEXES)}, got {index!r}")
    if not -1.0 <= threshold <= 1.0:
        raise PacosError(f"a cosine threshold is between -1 and 1, got {threshold:g}")
    records = list(records)
    first_of: dict[tuple[str, ...], int] = {}
    copy_of = [first_of.setdefault(dedup_key(r), i) for i, r in enumerate(records)]
    unique = [i for i, j in enumerate(copy_of) if i == j]
    used = "hnsw" if index == "hnsw" or (index == "auto" and len(unique) > EXACT_LIMIT) else "exact"

    started = time.perf_counter()
    embedder = embedder or bulk_embedder()
    vectors = embed_records([records[i] for i in unique], fields, embedder, show_progress=show_progress)
    embedded = time.perf_counter()
    greedy = greedy_keep_first(vectors, threshold, index=used, block_size=block_size)
    searched = time.perf_counter()

    # Decisions back on input positions: twin and score of every non-kept record.
    kept_flag = np.zeros(len(records), dtype=bool)
    twin_of = np.full(len(records), -1, dtype=np.int64)
    score_of = np.ones(len(records), dtype=np.float32)
    positions = np.asarray(unique, dtype=np.int64)
    kept_flag[positions] = greedy.kept
    dropped = ~greedy.kept
    twin_of[positions[dropped]] = positions[greedy.twin[dropped]]
    score_of[positions[dropped]] = greedy.score[dropped]

    kept: list[Record] = []
    rejected: list[Record] = []
    shown: list[dict[str, Any]] = []
    exact = 0
    for i, record in enumerate(records):
        first = copy_of[i]
        if first == i and kept_flag[i]:
            kept.append(record)
            continue
        if first == i:
            rule, twin_index, score = RULE, int(twin_of[i]), float(score_of[i])
        else:  # an exact copy: its group is the one its first occurrence belongs to
            exact += 1
            rule = DUPLICATE_RULE
            twin_index = first if kept_flag[first] else int(twin_of[first])
            score = 1.0 if kept_flag[first] else float(score_of[first])
        twin = records[twin_index]
        similar_to = twin.get("id", twin_index)
        label = f"id {similar_to!r}" if "id" in twin else f"#{twin_index}"
        if rule == RULE:
            reason = f"MiniLM cosine {score:.3f} > {threshold:g} with kept record {label}"
        else:
            reason = (
                f"same instruction, input and output as record #{first} (after Unicode, case and "
                "whitespace normalisation)" + ("" if kept_flag[first] else f", a near-duplicate of {label}")
            )
        rejected.append(
            {
                **record,
                "_rejected": {
                    "rule": rule,
                    "reason": reason,
                    "similar_to": similar_to,
                    "similar_instruction": twin.get("instruction", ""),
                    "score": round(score, 6),
                },
            }
        )
        if len(shown) < examples:
            shown.append(
                {
                    "rule": rule,
                    "instruction": (record.get("instruction") or "")[:160],
                    "similar_to": similar_to,
                    "similar_instruction": twin.get("instruction", "")[:160],
                    "score": round(score, 4),
                }
            )
    report = {
        "records_in": len(records),
        "records_kept": len(kept),
        "records_dropped": len(rejected),
        "rule": RULE,
        "mode": "semantic",
        "description": (
            f"{MODEL_NAME} cosine > {threshold:g} with an earlier kept record, on {' + '.join(fields)}; the "
            f"first of each group of near-duplicates is kept; exact duplicates ({DUPLICATE_RULE}) always go"
        ),
        "threshold": threshold,
        "model": MODEL_NAME,
        "embedding_precision": "bf16 matmuls" if getattr(embedder, "bf16", False) else "fp32",
        "fields": list(fields),
        "index": "exact" if used == "exact" else "faiss HNSW (approximate)",
        "exact_duplicates": exact,
        "near_duplicates": len(rejected) - exact,
        "embedded_records": len(unique),
        "embed_seconds": round(embedded - started, 2),
        "search_seconds": round(searched - embedded, 2),
        "examples": shown,
    }
    return DedupResult(kept=kept, rejected=rejected, report=report)
