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
from pathlib import Path
from typing import Any

from pacos.data.io import write_records
from pacos.data.records import ordered
from pacos.errors import PacosError
from pacos.fileio import AppendLog, write_json
from pacos.generate.config import GenerateConfig
from pacos.generate.filters import CandidateFilter
from pacos.generate.generator import GenerateTally, Generator, load_seeds, load_tally
from pacos.generate.modes import get_mode, mode_names
from pacos.llm.client import LLM, OpenAILLM, make_llm, teacher_device
from pacos.llm.limits import load_prices, price_for
from pacos.text.rouge import NoveltyFilter

# Settings that may change between a run and its resumption: they steer how, not what, is generated.
OPERATIONAL = {"num", "budget", "max_requests", "prices", "out_dir"}
OPERATIONAL_CLIENT = {
    "timeout", "max_retries", "backoff_base", "backoff_max", "concurrency", "requests_per_minute",
    "tokens_per_minute", "api_key_env",
}  # fmt: skip
FAILED_ROUNDS_LIMIT = 3  # rounds in a row in which every request failed: the teacher is not answering


def fingerprint(config: GenerateConfig) -> dict[str, Any]:
    settings = config.model_dump(exclude=OPERATIONAL)
    for name in mode_names():  # a mode's own settings (its section) define only that mode's runs
        if name != config.mode:
            settings.pop(name.replace("-", "_"), None)
    settings["client"] = {k: v for k, v in settings["client"].items() if k not in OPERATIONAL_CLIENT}
    if not settings["exclude"]:  # so that runs made before the setting existed resume unchanged
        del settings["exclude"]
    if settings.get("magpie", {}).get("turns") == 1:  # likewise
        del settings["magpie"]["turns"]
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


def summarize(
    config: GenerateConfig, teacher: LLM, tally: GenerateTally, stopped: str, exhausted: bool = False
) -> dict[str, Any]:
    # data.json holds at most `num`: a run resumed with a smaller --num has more in accepted.jsonl.
    accepted = min(len(tally.accepted), config.num)
    return {
        "stopped": stopped,
        "exhausted": exhausted,  # the mode ran out of work (evol: every round done) before `num`
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
    if teacher_device(config.teacher, config.client) == "cpu":
        config, changed = config.for_cpu_teacher()
        if changed:
            progress.note(
                f"the teacher computes on a CPU: smaller requests ({', '.join(changed)}; set to override)"
            )
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_run_dir(out_dir, fingerprint(config), force)
    mode = get_mode(config.mode)
    seeds = load_seeds(config) if mode.uses_seeds else []
    if mode.check is not None:  # bad mode input (evol's starting set) fails before any teacher is contacted
        mode.check(config)
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
        accepted_log, rejected_log, requests_log = logs
        run = Generator(
            config=config,
            teacher=teacher,
            seeds=seeds,
            tally=tally,
            novelty=novelty,
            candidate_filter=CandidateFilter(config),
            accepted_log=accepted_log,
            rejected_log=rejected_log,
            requests_log=requests_log,
            on_reply=getattr(progress, "reply", None),
        )
        failed_rounds, stopped = 0, None
        try:
            progress.start(tally)
            while (stopped := run.done()) is None:
                answered = await mode.round(run)
                failed_rounds = 0 if answered else failed_rounds + 1
                progress.update(tally)
                if failed_rounds >= FAILED_ROUNDS_LIMIT:
                    stopped = f"every request of {failed_rounds} rounds in a row failed"
                    break
        finally:
            progress.update(tally)  # an interrupted round's requests count too
            progress.stop()
            for log in logs:
                log.close()
            write_records([ordered(r) for r in tally.accepted[: config.num]], out_dir / "data.json", "json")
            summary = summarize(
                config, teacher, tally, stopped or "interrupted", exhausted=run.finished is not None
            )
            write_json(out_dir / "summary.json", summary)
        return summary
    finally:
        await teacher.close()


class QuietGenerateProgress:
    def note(self, message: str) -> None:
        pass

    def start(self, tally: GenerateTally) -> None:
        pass

    def update(self, tally: GenerateTally) -> None:
        pass

    def stop(self) -> None:
        pass


def generate(config: GenerateConfig, force: bool = False, progress: Any = None) -> dict[str, Any]:
    """Generate until `config.num` examples are accepted (or the budget / request limit is reached)."""
    return asyncio.run(_generate(config, force, progress or QuietGenerateProgress()))
