"""Preference pairs as training examples: tokenization, batches, and the reference log-probs.

A pair is its two answers tokenized exactly as SFT tokenizes a record (prompt alone, then the answer and
EOS), so a pair's log-probs are the log-probs inference gives those answers. A batch packs the answers of
its pairs one after another, chosen then rejected (or a KTO record's one answer); the loss reads each
answer's summed log-prob over its response tokens (`Batch.extra["sequence"]` says whose token is whose).

DPO and KTO compare the policy with a reference: the model training starts from. Its log-probs are computed
once, before the first step, by that very model (no second copy in memory, LoRA or full), and appended to
`reference-logps.jsonl` in the output directory keyed by the answer's tokens, so a resumed run (whose model
has moved) reads them instead of recomputing, and a killed computation continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pacos.data.pairs import is_pair
from pacos.errors import PacosError
from pacos.fileio import atomic_open
from pacos.train import distributed as dist_utils
from pacos.train.data import IGNORE, Batch, Example, TokenizeReport, collate, tokenize_record


@dataclass
class PairExample:
    """One pair (sequences = [chosen, rejected]) or one KTO answer (sequences = [answer])."""

    sequences: list[Example]
    chosen: list[bool]  # per sequence: the preferred (desirable) answer?
    reference: list[float] | None = field(default=None)  # summed reference log-prob per sequence

    def __len__(self) -> int:
        return sum(len(s) for s in self.sequences)


def sequence_key(example: Example) -> str:
    payload = np.asarray([*example.input_ids, -1, *example.targets], dtype=np.int64).tobytes()
    return hashlib.sha256(payload).hexdigest()[:24]


def tokenize_pairs(
    records: list[dict[str, Any]], tokenizer: Any, template: str, max_length: int, truncation: str
) -> tuple[list[PairExample], TokenizeReport]:
    """Pairs (and KTO records) as examples; a pair one of whose answers is too long is dropped whole."""
    report = TokenizeReport()
    out = []
    for record in records:
        if is_pair(record):
            answers, chosen = [record["chosen"], record["rejected"]], [True, False]
        elif "label" in record:
            answers, chosen = [record["output"]], [bool(record["label"])]
        else:
            raise PacosError(
                "a preference objective needs pairs (chosen/rejected) or KTO records (output + label); "
                f"found a record with fields {', '.join(sorted(record))}"
            )
        sequences = []
        for answer in answers:
            example, status = tokenize_record(
                {**record, "output": answer}, tokenizer, template, max_length, truncation
            )
            if example is None:
                break
            report.cut += status == "cut"
            sequences.append(example)
        if len(sequences) < len(answers):
            report.dropped_too_long += 1
            continue
        report.kept += 1
        for s in sequences:
            n = sum(t != IGNORE for t in s.targets)
            report.response_tokens += n
            report.prompt_tokens += len(s) - n
        out.append(PairExample(sequences, chosen))
    return out, report


def collate_pairs(pairs: list[PairExample], pad_id: int, packing: bool, units: str) -> Batch:
    """The answers of `pairs` in one batch, with per-token sequence ids, chosen flags and reference log-probs;
    `units` ("pairs" or "sequences") is what the loss is averaged over."""
    sequences = [s for p in pairs for s in p.sequences]
    batch = collate(sequences, pad_id, packing)
    owner = torch.cat(
        [torch.full((sum(t != IGNORE for t in s.targets),), i) for i, s in enumerate(sequences)]
    )
    batch.extra = {
        "sequence": owner,
        "chosen": torch.tensor([c for p in pairs for c in p.chosen]),
    }
    if all(p.reference is not None for p in pairs):
        batch.extra["reference"] = torch.tensor([r for p in pairs for r in p.reference], dtype=torch.float64)
    batch.units = len(pairs) if units == "pairs" else len(sequences)
    return batch


def pair_batches(
    pairs: list[PairExample],
    indices: list[int],
    micro_batch_size: int,
    pad_id: int,
    packing: bool,
    units: str,
) -> list[Batch]:
    chosen = [pairs[i] for i in indices]
    if not packing:
        chosen.sort(key=len, reverse=True)
    return [
        collate_pairs(chosen[i : i + micro_batch_size], pad_id, packing, units)
        for i in range(0, len(chosen), micro_batch_size)
    ]


def _read_cache(path: Path) -> dict[str, float]:
    found: dict[str, float] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                found[row["key"]] = float(row["logp"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a kill: recomputed
    return found


@torch.no_grad()
def fill_reference(
    objective: Any,
    pairs: list[PairExample],
    cache: Path,
    micro_batch_size: int,
    pad_id: int,
    runtime: dist_utils.Runtime,
) -> int:
    """Set every pair's reference log-probs (from `cache`, else computed by `objective.sequence_logps`
    with any LoRA adapter switched off); returns how many answers were computed. Called before a resumed
    run loads its checkpoint, so the model is always the starting one."""
    known = _read_cache(cache)
    todo, queued = [], set(known)
    for i, p in enumerate(pairs):  # each distinct answer once
        keys = {sequence_key(s) for s in p.sequences}
        if not keys <= queued:
            todo.append(i)
            queued |= keys
    todo_all = int(dist_utils.all_reduce_sum(len(todo), runtime))
    mine = todo[runtime.rank :: runtime.world_size]
    # Every process runs the same number of forward passes (FSDP gathers shards in each one).
    n_batches = int(-(-len(todo) // (micro_batch_size * runtime.world_size))) if todo else 0
    model = objective.model
    off = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    was_training = objective.training
    objective.eval()
    computed = 0
    started, shown = time.monotonic(), time.monotonic()
    with off:
        for b in range(n_batches):
            if runtime.is_main and time.monotonic() - shown > 30:  # long work shows progress
                shown = time.monotonic()
                print(f"[train] reference log-probs: batch {b}/{n_batches} ({shown - started:.0f} s)",
                      file=sys.stderr, flush=True)  # fmt: skip
            chunk = mine[b * micro_batch_size : (b + 1) * micro_batch_size] or todo[:1]  # padding call
            batch = collate_pairs([pairs[i] for i in chunk], pad_id, True, "pairs").to(runtime.device)
            with dist_utils.autocast(runtime):
                logps = objective.sequence_logps(batch)[0].double().cpu().tolist()
            if not mine[b * micro_batch_size : (b + 1) * micro_batch_size]:
                continue
            sequences = [s for i in chunk for s in pairs[i].sequences]
            lines = "".join(
                json.dumps({"key": sequence_key(s), "logp": v}) + "\n" for s, v in zip(sequences, logps)
            )
            if runtime.distributed:  # one writer per process: gathered below
                known.update({sequence_key(s): v for s, v in zip(sequences, logps)})
            else:
                with cache.open("a", encoding="utf-8") as f:
                    f.write(lines)
                known.update({sequence_key(s): v for s, v in zip(sequences, logps)})
            computed += len(sequences)
    objective.train(was_training)
    if runtime.distributed:
        gathered: list[dict[str, float]] = [{} for _ in range(runtime.world_size)]
        torch.distributed.all_gather_object(gathered, known)
        for part in gathered:
            known.update(part)
        if runtime.is_main and todo_all:
            with atomic_open(cache) as f:
                f.write("".join(json.dumps({"key": k, "logp": v}) + "\n" for k, v in known.items()))
    for p in pairs:
        p.reference = [known[sequence_key(s)] for s in p.sequences]
    return computed
