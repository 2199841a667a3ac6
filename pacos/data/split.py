"""Deterministic train/val/test splits that keep identical prompts in one split (no leakage)."""

from __future__ import annotations

import random

from pacos.data.records import Record
from pacos.errors import PacosError


def _group_key(record: Record) -> tuple[str, str]:
    return (" ".join(record["instruction"].casefold().split()), " ".join((record.get("input") or "").split()))


def split_records(records: list[Record], val: float, test: float, seed: int = 0) -> dict[str, list[Record]]:
    """Shuffle prompt groups with `seed`, then fill test, then val; the rest is train."""
    for name, fraction in (("val", val), ("test", test)):
        if not 0 <= fraction < 1:
            raise PacosError(f"--{name} must be a fraction in [0, 1), got {fraction}")
    if val + test >= 1:
        raise PacosError(f"--val + --test must leave some training data (got {val + test:g})")
    groups: dict[tuple[str, str], list[Record]] = {}
    for record in records:
        groups.setdefault(_group_key(record), []).append(record)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    n = len(records)
    # A requested split gets at least one record whenever the data allows it.
    targets = {
        name: max(round(n * f), 1 if f > 0 and n >= 3 else 0) for name, f in (("test", test), ("val", val))
    }
    splits: dict[str, list[Record]] = {"train": [], "val": [], "test": []}
    queue = iter(order)
    for name in ("test", "val"):
        while len(splits[name]) < targets[name]:
            group = next(queue, None)
            if group is None:
                break
            splits[name].extend(group)
    for group in queue:
        splits["train"].extend(group)
    if not splits["train"]:
        raise PacosError(f"only {n} records: too few to split off val/test and keep training data")
    return splits
