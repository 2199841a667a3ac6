"""The generation loop behind `pacos generate`: rounds of teacher requests, parsing, filters, novelty.

Everything a run produces lives in append-only files in its directory, so a run killed at any moment
(SIGKILL, power loss) resumes by running the same command again:
- `accepted.jsonl`: every accepted example, appended and fsynced as it is accepted;
- `rejected.jsonl`: every rejected candidate with its rule and reason;
- `requests.jsonl`: every finished request: prompt's seed ids, reply, usage, cost, errors;
- `run.json`: the settings that define the run (a rerun with other settings is refused without --force);
- `data.json` (Alpaca JSON of the accepted examples) and `summary.json`, written atomically at the end.
On resume the novelty pool is rebuilt from the seeds and `accepted.jsonl`, a line cut short by the kill
is dropped, and the request counter continues, so the target count is reached exactly, with no duplicate.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacos.data.io import read_records, write_records
from pacos.data.records import ordered
from pacos.errors import PacosError
from pacos.fileio import AppendLog, read_jsonl_repairing, write_json
from pacos.generate.config import GenerateConfig
from pacos.generate.filters import CandidateFilter
from pacos.generate.parse import parse_tasks
from pacos.generate.prompts import continuation_prefix, list_prompt, stop_strings
from pacos.llm.client import LLM, OpenAILLM, Reply, Request, make_llm, reply_record
from pacos.llm.limits import load_prices, price_for
from pacos.text.rouge import NoveltyFilter, Verdict

# Settings that may change between a run and its resumption: they steer how, not what, is generated.
OPERATIONAL = {"num", "budget", "max_requests", "prices", "out_dir"}
OPERATIONAL_CLIENT = {
    "timeout", "max_retries", "backoff_base", "backoff_max", "concurrency", "requests_per_minute",
    "tokens_per_minute", "api_key_env",
}  # fmt: skip
FAILED_ROUNDS_LIMIT = 3  # rounds in a row in which every request failed: the teacher is not answering


@dataclass
class Tally:
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


def fingerprint(config: GenerateConfig) -> dict[str, Any]:
    settings = config.model_dump(exclude=OPERATIONAL)
    for mode in ("evol", "magpie"):  # a mode's own settings define only that mode's runs
        if config.mode != mode:
            del settings[mode]
    settings["client"] = {k: v for k, v in settings["client"].items() if k not in OPERATIONAL_CLIENT}
    return settings


def check_run_dir(out_dir: Path, run: dict[str, Any], force: bool) -> None:
    path = out_dir / "run.json"
    if path.exists():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            before = None
        if before != run and not force:
            changed = sorted(
                k for k in set(run) | set(before or {}) if (before or {}).get(k) != run.get(k)
            ) or ["(unreadable run.json)"]
            raise PacosError(
                f"{out_dir} holds a run with other settings ({', '.join(changed)} differ); use another "
                "--out, or --force to continue it with the new settings"
            )
    write_json(path, run)


@dataclass
class Generator:
    """One generation run: state, teacher, filters; `round` makes and judges one batch of requests."""

    config: GenerateConfig
    teacher: LLM
    seeds: list[dict[str, Any]]
    tally: Tally
    novelty: NoveltyFilter
    candidate_filter: CandidateFilter
    accepted_log: AppendLog
    rejected_log: AppendLog
    requests_log: AppendLog
    state: Any = None  # a mode's own state between rounds (evol: the pool)
    finished: str | None = None  # a mode that ran out of work says why (evol: every round done)

    def request(self, number: int) -> tuple[Request, list[dict[str, Any]]]:
        c = self.config
        rng = random.Random(f"{c.seed}-{number}")  # the same request after a resume
        shown = rng.sample(self.seeds, c.prompt_examples)
        prompt = list_prompt(shown, c.language, c.tasks_per_request, chat=self.teacher.chat)
        request = Request(
            f"req-{number:06d}",
            prompt,
            c.max_tokens,
            c.temperature,
            c.top_p,
            stop_strings(c.tasks_per_request),
            seed=rng.randrange(2**31),
        )
        return request, shown

    def reject(self, record: dict[str, Any], rule: str, reason: str, request_id: str) -> None:
        self.tally.rejected[rule] += 1
        why = {"rule": rule, "reason": reason, "request": request_id}
        self.rejected_log.write({**record, "_rejected": why})

    def judge_record(
        self,
        record: dict[str, Any],
        reply: Reply,
        seed_ids: list[Any],
        extra: dict[str, Any] | None = None,
        verdict: Verdict | None = None,
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

    def judge(self, reply: Reply, shown: list[dict[str, Any]]) -> None:
        """Parse one Alpaca-mode reply and keep what passes every filter, until the target is reached."""
        c = self.config
        text = reply.text
        if not self.teacher.chat:  # the completion continues the prompt's last, unfinished label
            text = continuation_prefix(c.prompt_examples + 1, c.language) + text
        parsed = parse_tasks(text, truncated=reply.finish_reason == "length")
        for start in parsed.incomplete:
            self.reject(
                {"instruction": start}, "incomplete", "not an instruction with an output", reply.request_id
            )
        if parsed.truncated is not None:
            self.reject(
                {"instruction": parsed.truncated}, "truncated", "the token limit cut it", reply.request_id
            )
        seed_ids = [s.get("id") for s in shown]
        for candidate in parsed.candidates:
            record = {
                "instruction": candidate.instruction,
                "input": candidate.input,
                "output": candidate.output,
            }
            self.judge_record(record, reply, seed_ids)

    async def send(
        self, requests: list[Request], metas: list[dict[str, Any]], teacher: LLM | None = None
    ) -> list[Reply]:
        """Run requests on the teacher (or another view of it: Magpie's raw completions); log every reply
        (append-only) before anything is judged."""
        c, tally = self.config, self.tally

        def over_budget() -> bool:
            return c.budget is not None and tally.cost >= c.budget

        start = time.monotonic()
        replies = await (teacher or self.teacher).run(requests, over_budget)
        share = (time.monotonic() - start) / max(len(requests), 1)  # the wall time, per request
        for reply, request, meta in zip(replies, requests, metas, strict=True):
            row = reply_record(reply, request, {**meta, "wall_seconds": round(share, 3)})
            self.requests_log.write(row)
            tally.add_reply(json.loads(row))
        return replies

    async def round(self) -> bool:
        """One batch of requests; False when every request failed."""
        c, tally = self.config, self.tally
        if c.mode == "self-instruct":
            from pacos.generate.self_instruct import self_instruct_round

            return await self_instruct_round(self)
        if c.mode == "evol":
            from pacos.generate.evol import evol_round

            return await evol_round(self)
        if c.mode == "magpie":
            from pacos.generate.magpie import magpie_round

            return await magpie_round(self)
        count = c.requests_per_round or self.teacher.batch_size
        if c.max_requests is not None:
            count = min(count, c.max_requests - tally.requests)
        batch = [self.request(tally.requests + i) for i in range(count)]
        metas = [{"seed_ids": [s.get("id") for s in shown]} for _, shown in batch]
        replies = await self.send([r for r, _ in batch], metas)
        for reply, (_, shown) in zip(replies, batch, strict=True):
            if reply.error is None:
                self.judge(reply, shown)
        return any(r.error is None for r in replies)

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


def load_tally(out_dir: Path) -> Tally:
    tally = Tally(accepted=read_jsonl_repairing(out_dir / "accepted.jsonl"))
    for row in read_jsonl_repairing(out_dir / "rejected.jsonl"):
        tally.rejected[(row.get("_rejected") or {}).get("rule", "unknown")] += 1
    for row in read_jsonl_repairing(out_dir / "requests.jsonl"):
        tally.add_reply(row)
    return tally


def summarize(config: GenerateConfig, teacher: LLM, tally: Tally, stopped: str) -> dict[str, Any]:
    # data.json holds at most `num`: a run resumed with a smaller --num has more in accepted.jsonl.
    accepted = min(len(tally.accepted), config.num)
    return {
        "stopped": stopped,
        "teacher": teacher.name,
        "model": teacher.model,
        "mode": config.mode,
        "language": config.language,
        "target": config.num,
        "accepted": accepted,
        "rejected": sum(tally.rejected.values()),
        "rejected_by_reason": dict(tally.rejected.most_common()),
        "requests": tally.requests,
        "failed_requests": dict(tally.failed.most_common()),
        "prompt_tokens": tally.prompt_tokens,
        "completion_tokens": tally.completion_tokens,
        "cost_usd": round(tally.cost, 6),
        "seconds": round(tally.seconds, 1),
        "requests_per_accepted": round(tally.requests / accepted, 3) if accepted else None,
        "seconds_per_accepted": round(tally.seconds / accepted, 2) if accepted else None,
    }


async def _generate(config: GenerateConfig, force: bool, progress: Any) -> dict[str, Any]:
    if not config.teacher:
        raise PacosError(
            "no teacher: pass --teacher (http://HOST:PORT/v1, local:NAME or llama.cpp:FILE.gguf)"
        )
    if not config.out_dir:
        raise PacosError("no output directory: pass --out DIR")
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_run_dir(out_dir, fingerprint(config), force)
    # Evol reads its own starting set (outputs optional); Magpie has no seeds at all.
    seeds = load_seeds(config) if config.mode in ("alpaca", "self-instruct") else []
    if config.mode == "evol":  # a bad starting set fails before any teacher is contacted
        from pacos.generate.evol import load_start

        load_start(config)
    prices = load_prices(config.prices)
    teacher = make_llm(config.teacher, config.model, config.client, None)
    try:
        if isinstance(teacher, OpenAILLM):
            teacher.price = price_for(await teacher.resolve_model(), prices)
            if config.budget is not None and teacher.price is None:
                raise PacosError(
                    f"--budget: no price for model '{teacher.model}' in the price table; add it "
                    "(--set prices=FILE, see pacos/llm/prices.yaml) or drop --budget"
                )
        tally = load_tally(out_dir)
        novelty = NoveltyFilter(config.novelty_threshold, config.tokenizer, top_k=config.similar_k)
        for record in seeds:
            novelty.add(record["instruction"])
        for record in tally.accepted:
            novelty.add(record["instruction"])
        logs = [AppendLog(out_dir / f"{name}.jsonl") for name in ("accepted", "rejected", "requests")]
        run = Generator(config, teacher, seeds, tally, novelty, CandidateFilter(config), *logs)
        failed_rounds, stopped = 0, None
        try:
            progress.start(tally)
            while (stopped := run.done()) is None:
                answered = await run.round()
                failed_rounds = 0 if answered else failed_rounds + 1
                progress.update(tally)
                if failed_rounds >= FAILED_ROUNDS_LIMIT:
                    stopped = f"every request of {failed_rounds} rounds in a row failed"
                    break
        finally:
            progress.stop()
            for log in logs:
                log.close()
            write_records([ordered(r) for r in tally.accepted[: config.num]], out_dir / "data.json", "json")
            summary = summarize(config, teacher, tally, stopped or "interrupted")
            write_json(out_dir / "summary.json", summary)
        return summary
    finally:
        await teacher.close()


class NoProgress:
    def start(self, tally: Tally) -> None:
        pass

    def update(self, tally: Tally) -> None:
        pass

    def stop(self) -> None:
        pass


def generate(config: GenerateConfig, force: bool = False, progress: Any = None) -> dict[str, Any]:
    """Generate until `config.num` examples are accepted (or the budget / request limit is reached)."""
    return asyncio.run(_generate(config, force, progress or NoProgress()))
