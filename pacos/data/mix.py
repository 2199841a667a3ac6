"""Weighted mixtures of several instruction sets, deterministic for a seed."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacos.data.contamination import ContaminationIndex, find_contamination, split_clean
from pacos.data.records import Record
from pacos.errors import PacosError


@dataclass(frozen=True)
class MixSource:
    name: str
    path: str
    weight: float


def parse_source(spec: str) -> MixSource:
    """`PATH:WEIGHT` or `NAME=PATH:WEIGHT`; the name (default: the file's stem) becomes `source`."""
    path, sep, weight_text = spec.rpartition(":")
    if not sep or not path:
        raise PacosError(f"mix source '{spec}': expected PATH:WEIGHT, e.g. alpaca.json:0.7")
    try:
        weight = float(weight_text)
    except ValueError:
        raise PacosError(f"mix source '{spec}': weight '{weight_text}' is not a number") from None
    if not math.isfinite(weight) or weight <= 0:
        raise PacosError(f"mix source '{spec}': weight must be a positive number")
    name, eq, rest = path.partition("=")
    if eq and name and "/" not in name:
        path = rest
    else:
        name = Path(path).stem or path
    return MixSource(name=name, path=path, weight=weight)


def allocate(total: int, weights: list[float]) -> list[int]:
    """Split `total` into integer counts proportional to `weights` (largest remainder method)."""
    shares = [total * w / sum(weights) for w in weights]
    counts = [math.floor(s) for s in shares]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - shares[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def drop_contaminated(
    sources: list[tuple[MixSource, list[Record]]], index: ContaminationIndex
) -> tuple[list[tuple[MixSource, list[Record]]], list[Record], dict[str, int]]:
    """Each source without its records that overlap an evaluation prompt of `index` (pacos data
    contamination's checks), before anything is drawn: (the clean sources, the rejects with their reason
    and source, how many each source lost)."""
    clean_sources: list[tuple[MixSource, list[Record]]] = []
    rejects: list[Record] = []
    dropped: dict[str, int] = {}
    for source, records in sources:
        clean, rejected = split_clean(records, find_contamination(records, index))
        if records and not clean:
            raise PacosError(f"mix source '{source.path}': every record overlaps an evaluation prompt")
        clean_sources.append((source, clean))
        rejects += [{**r, "_rejected": {**r["_rejected"], "source": source.name}} for r in rejected]
        dropped[source.name] = len(rejected)
    return clean_sources, rejects, dropped


def mix_records(
    sources: list[tuple[MixSource, list[Record]]], n: int | None, seed: int = 0
) -> tuple[list[Record], dict[str, Any]]:
    """Draw `n` records with the given weights, each tagged with its `source`.

    A source is sampled without replacement while it has enough records; beyond that its records are
    repeated (the report says how many). Without `n`, the largest mixture needing no repeats is drawn.
    """
    if not sources:
        raise PacosError("mix needs at least one source")
    names = [s.name for s, _ in sources]
    if len(set(names)) != len(names):
        raise PacosError(f"mix sources need distinct names (got {', '.join(names)}); use NAME=PATH:WEIGHT")
    weights = [s.weight for s, _ in sources]
    if n is None:
        n = min(math.floor(len(recs) * sum(weights) / s.weight) for s, recs in sources)
    if n <= 0:
        raise PacosError("mix: the number of records to draw must be positive")
    rng = random.Random(seed)
    mixed: list[Record] = []
    report: dict[str, Any] = {"n": n, "seed": seed, "sources": []}
    for (source, records), count in zip(sources, allocate(n, weights)):
        available = len(records)
        picked = rng.sample(range(available), min(count, available))
        repeats = count - len(picked)
        if repeats:
            picked += rng.choices(range(available), k=repeats)
        for i in picked:
            record = dict(records[i])
            if record.get("source") and record["source"] != source.name:
                record["metadata"] = {**(record.get("metadata") or {}), "original_source": record["source"]}
            record["source"] = source.name
            mixed.append(record)
        report["sources"].append(
            {
                "name": source.name,
                "path": source.path,
                "weight": source.weight,
                "available": available,
                "drawn": count,
                "repeated": repeats,
            }
        )
    rng.shuffle(mixed)
    return mixed, report
