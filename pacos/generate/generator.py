"""A generation run's state, shared by every mode: the teacher, the seeds, the tally, the filters, the
novelty pool and the append-only logs (accepted, rejected, requests)."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacos.data.io import read_records
from pacos.errors import PacosError
from pacos.fileio import AppendLog, read_jsonl_repairing
from pacos.generate.config import GenerateConfig
from pacos.generate.filters import CandidateFilter
from pacos.llm.client import LLM, Reply, Request, reply_record
from pacos.text.rouge import NoveltyFilter, NoveltyVerdict


@dataclass
class GenerateTally:
    """What the run has done so far, rebuilt from its files on resume."""

    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # failed requests by error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0  # waiting for the teacher, summed over resumptions

    def add_reply(self, row: dict[str, Any]) -> None:
        self.requests += 1
        if row.get("error"):
            self.failed[row["error"]] += 1
        self.prompt_tokens += int(row.get("prompt_tokens") or 0)
        self.completion_tokens += int(row.get("completion_tokens") or 0)
        self.cost += float(row.get("cost") or 0.0)
        self.seconds += float(row.get("wall_seconds") or 0.0)


def load_seeds(config: GenerateConfig) -> list[dict[str, Any]]:
    """Seed tasks as records, one per distinct instruction (the first instance shows the task)."""
    source = config.seeds or ("seed-tasks-zh" if config.language == "zh" else "seed-tasks-en")
    seen, seeds = set(), []
    for record in read_records(source):
        if record["instruction"] not in seen:
            seen.add(record["instruction"])
            seeds.append(record)
    if len(seeds) < config.prompt_examples:
        raise PacosError(
            f"seeds {source}: {len(seeds)} distinct tasks, fewer than "
            f"prompt_examples={config.prompt_examples}"
        )
    return seeds


def load_tally(out_dir: Path) -> GenerateTally:
    tally = GenerateTally(accepted=read_jsonl_repairing(out_dir / "accepted.jsonl"))
    for row in read_jsonl_repairing(out_dir / "rejected.jsonl"):
        tally.rejected[(row.get("_rejected") or {}).get("rule", "unknown")] += 1
    for row in read_jsonl_repairing(out_dir / "requests.jsonl"):
        tally.add_reply(row)
    return tally


@dataclass(kw_only=True)
class Generator:
    """One generation run's state and what every mode does with it: send requests (every reply logged
    before anything is judged), admit a candidate through the filters and the novelty pool, reject one
    with a rule and a reason, and say when the run is done. The modes (pacos.generate.modes) make the
    requests and read the replies."""

    config: GenerateConfig
    teacher: LLM
    seeds: list[dict[str, Any]]
    tally: GenerateTally
    novelty: NoveltyFilter
    candidate_filter: CandidateFilter
    accepted_log: AppendLog
    rejected_log: AppendLog
    requests_log: AppendLog
    state: Any = None  # a mode's own state between rounds (evol: the pool)
    finished: str | None = None  # a mode that ran out of work says why (evol: every round done)
    on_reply: Any = None  # hears of every reply as it comes (progress), before the round is judged

    def reject(self, record: dict[str, Any], rule: str, reason: str, request_id: str) -> None:
        self.tally.rejected[rule] += 1
        why = {"rule": rule, "reason": reason, "request": request_id}
        self.rejected_log.write({**record, "_rejected": why})

    def admit(
        self,
        record: dict[str, Any],
        reply: Reply,
        seed_ids: list[Any],
        extra: dict[str, Any] | None = None,
        verdict: NoveltyVerdict | None = None,
    ) -> None:
        """Filters, then novelty (unless `verdict` says it was checked), then append it to accepted.jsonl."""
        if len(self.tally.accepted) >= self.config.num:
            return
        record, rule, reason = self.candidate_filter(record)
        if rule:
            self.reject(record, rule, reason or rule, reply.request_id)
            return
        if verdict is None:
            verdict = self.novelty.offer(record["instruction"])  # a novel one joins the pool at once
            if not verdict.novel:
                twin, score = verdict.most_similar[0]
                self.reject(record, "not_novel", f"ROUGE-L {score:.2f} with {twin!r}", reply.request_id)
                return
        c = self.config
        accepted = {
            "id": f"gen-{len(self.tally.accepted) + 1:06d}",
            **record,
            "source": "pacos-generate",
            "metadata": {
                "teacher": self.teacher.name,
                "model": self.teacher.model,
                "request_id": reply.request_id,
                "seed_ids": seed_ids,
                "mode": c.mode,
                "language": c.language,
                "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **(extra or {}),
                "most_similar": [
                    {"instruction": text, "rouge_l": round(score, 4)} for text, score in verdict.most_similar
                ],
            },
        }
        self.accepted_log.write(accepted)
        self.tally.accepted.append(accepted)

    async def send(
        self, requests: list[Request], metas: list[dict[str, Any]], teacher: LLM | None = None
    ) -> list[Reply]:
        """Run requests on the teacher (or another view of it: Magpie's raw completions); log every reply
        (append-only) before anything is judged."""
        c, tally = self.config, self.tally

        def over_budget() -> bool:
            return c.budget is not None and tally.cost >= c.budget

        start = time.monotonic()
        replies = await (teacher or self.teacher).run(requests, over_budget, on_reply=self.on_reply)
        share = (time.monotonic() - start) / max(len(requests), 1)  # the wall time, per request
        for reply, request, meta in zip(replies, requests, metas, strict=True):
            row = reply_record(reply, request, {**meta, "wall_seconds": round(share, 3)})
            self.requests_log.write(row)
            tally.add_reply(json.loads(row))
        return replies

    def done(self) -> str | None:
        c, tally = self.config, self.tally
        if len(tally.accepted) >= c.num:
            return "target reached"
        if self.finished:
            return self.finished
        if c.budget is not None and tally.cost >= c.budget:
            return f"budget of ${c.budget:g} reached"
        if c.max_requests is not None and tally.requests >= c.max_requests:
            return f"max_requests={c.max_requests} reached"
        return None
