"""`pacos pairs`: preference pairs from a model's own answers, scored by programs, references or a judge.

For every prompt the model answers k times (sampled, each answer cached as soon as its batch is done, so a
killed run resumes without asking again); each answer gets a reward, a weighted sum of:

- `checks`: the verifiable instructions the prompt carries (`checks`, as in the evaluation set and
  pacos.data.verifiable's pool): the share of them passed, plus 1 when all pass (the prompt-level metric).
  No judge needed (Tulu 3's verifiable rewards), English and Chinese alike;
- `reference`: ROUGE-L F1 against the prompt's reference `output` (Chinese on characters);
- `judge`: a 1-5 rating by any judge (pacos.score.judge: logprob-weighted, cached), as (rating - 1) / 4;
- `eos`: -1 when the answer ran to max_new_tokens instead of ending;
- `repetition`: minus twice the share of repeated 4-grams (loops).

The best and the worst answer of a prompt make a pair when their rewards differ by at least `min_margin`
and the best one ended by itself (a cut answer would be learned with an EOS it never produced).
With `repair`, a prompt whose answers all miss some of its checks also gets the best ended answer edited
to pass them (pacos.text.repair: its own words upper-cased, regrouped into bullets, ...) as a candidate:
the instructions a small model never follows by chance get positive examples. With `minimal` too, a
repaired chosen answer is paired with the very answer it was edited from, so that the pair differs only by
the edit (the instruction, not the rest of the answer, is what the pair teaches; benchmarks/README.md).
With `reference_chosen`, a prompt with a reference `output` and no checks pairs that reference (chosen)
with the model's worst answer (SPIN, Chen et al. 2024: the demonstration preferred to the model's own
answer), which holds the model to the answers it was tuned on while other pairs teach instructions.
With `stop_pairs`, a prompt whose answers include one that ran out of tokens also gets the pair (that
answer cut before its loop, ended; the whole answer): preference training otherwise drifts towards answers
that never end (benchmarks/README.md, "Reference answers as chosen"). With `greedy`, each prompt's greedy
answer comes first among its answers (and is the first a stop pair is cut from).
Writes samples.jsonl (every answer with its reward parts), pairs.jsonl (pacos's pair format, which
`pacos train --method dpo` reads; `--trl` also writes TRL's) and summary.json.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pacos.data.io import write_records
from pacos.data.pairs import to_trl
from pacos.errors import PacosError
from pacos.fileio import KeyedCache, write_json
from pacos.llm.answers import Decoding, answer_records
from pacos.text.checks import check_prompt
from pacos.text.ngrams import repeated_ngram_share, rouge_l
from pacos.text.repair import cut_loop, repair

REWARDS = ("checks", "reference", "judge", "eos", "repetition")
DEFAULT_WEIGHTS = {"checks": 1.0, "reference": 1.0, "judge": 1.0, "eos": 1.0, "repetition": 1.0}


def parse_rewards(parts: list[str] | tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, float]]:
    """Reward names, optionally weighted ("eos=2"), as names and a weight for each."""
    names, weights = [], dict(DEFAULT_WEIGHTS)
    for part in (p.strip() for p in parts if p.strip()):
        name, _, weight = part.partition("=")
        try:
            weights[name] = float(weight) if weight else weights.get(name, 1.0)
        except ValueError:
            raise PacosError(f"reward {part}: the weight must be a number") from None
        names.append(name)
    return tuple(names), weights


@dataclass
class PairSettings:
    model: str  # local model (name, directory, adapter) or an http(s)://HOST:PORT/v1 endpoint
    k: int = 4
    rewards: tuple[str, ...] = ("checks", "eos", "repetition")
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    min_margin: float = 0.25
    max_new_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0
    template: str | None = None
    served_model: str | None = None
    dtype: str = "auto"
    quantize: str = "auto"
    judge: str | None = None  # needed by the `judge` reward
    judge_model: str | None = None
    batch_prompts: int = 48  # prompts per engine batch: what a killed run can lose at most
    repair: bool = False  # add the best answer edited to pass its checks (pacos.text.repair)
    minimal: bool = False  # a repaired chosen answer's rejected one is the answer it was edited from
    reference_chosen: bool = False  # prompts with an `output` and no checks: it is the chosen answer (SPIN)
    stop_pairs: bool = False  # also (an answer that ran out of tokens cut before its loop, the whole answer)
    # Also the greedy answer (temperature 0), first of each prompt's answers: evaluation and most use decode
    # greedily, and its failures (a list that never ends) are ones sampling at temperature 0.8 rarely shows.
    greedy: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.rewards) - set(REWARDS))
        if unknown:
            raise PacosError(f"unknown reward {', '.join(unknown)} (known: {', '.join(REWARDS)})")
        if not self.rewards:
            raise PacosError("give at least one reward")
        if "judge" in self.rewards and not self.judge:
            raise PacosError("the judge reward needs --judge (an endpoint or local:NAME)")
        if self.minimal and not self.repair:
            raise PacosError("minimal pairs are made of repaired answers: use them with --repair")
        if self.k < 2:
            raise PacosError(f"k={self.k}: a pair needs at least 2 answers per prompt")


def _say(message: str) -> None:
    print(f"[pairs] {message}", file=sys.stderr, flush=True)


def sample_answers(
    prompts: list[dict[str, Any]], settings: PairSettings, cache: KeyedCache
) -> list[list[dict[str, Any]]]:
    """k answers per prompt (answer j with sampling seed seed + j), after the greedy one with `greedy`,
    from the cache where they are."""
    from pacos.infer.quantize import decoding_weights

    dtype, quantize = decoding_weights(settings.dtype, settings.quantize)
    answers: list[list[dict[str, Any]]] = [[] for _ in prompts]
    runs = ([None] if settings.greedy else []) + list(range(settings.k))
    total, made, started = len(prompts) * len(runs), 0, time.monotonic()
    for j in runs:
        decoding = Decoding(
            max_new_tokens=settings.max_new_tokens,
            temperature=0.0 if j is None else settings.temperature,
            top_p=1.0 if j is None else settings.top_p,
            seed=settings.seed if j is None else settings.seed + j,
            dtype=dtype,
            quantize=quantize,
        )
        for start in range(0, len(prompts), settings.batch_prompts):
            chunk = prompts[start : start + settings.batch_prompts]
            got, fresh = answer_records(
                settings.model,
                chunk,
                decoding,
                served_model=settings.served_model,
                template=settings.template,
                cache=cache,
            )
            for i, answer in enumerate(got):
                answers[start + i].append(answer)
            made += len(chunk)
            if fresh:
                _say(f"answers {made}/{total} ({fresh} new, {time.monotonic() - started:.0f} s)")
    return answers


def answer_rewards(
    prompt: dict[str, Any], answer: dict[str, Any], rewards: tuple[str, ...], judged: float | None = None
) -> dict[str, float]:
    """The reward parts of one answer (unweighted); a part that does not apply to the prompt is left out."""
    text = answer["text"]
    parts: dict[str, float] = {}
    if "checks" in rewards and prompt.get("checks"):
        result = check_prompt(text, prompt["checks"])
        passed = [p["strict"] for p in result["instructions"]]
        parts["checks"] = sum(passed) / len(passed) + float(result["strict"])
    if "reference" in rewards and prompt.get("output"):
        parts["reference"] = rouge_l(text, prompt["output"])
    if "judge" in rewards and judged is not None:
        parts["judge"] = (judged - 1) / 4
    if "eos" in rewards:
        parts["eos"] = -1.0 if answer.get("finish_reason") == "length" else 0.0
    if "repetition" in rewards:
        parts["repetition"] = -2.0 * repeated_ngram_share(text)
    return parts


def _judge_ratings(
    prompts: list[dict[str, Any]], answers: list[list[dict[str, Any]]], settings: PairSettings, out: Path
) -> list[list[float | None]]:
    from pacos.score.common import ScoreTally
    from pacos.score.judge import RatingSettings, judge_records

    rows = [
        {"instruction": p["instruction"], "input": p.get("input", ""), "output": a["text"]}
        for p, group in zip(prompts, answers)
        for a in group
    ]
    cache = KeyedCache(out / "judgments.jsonl")
    try:
        judge_records(rows, RatingSettings(settings.judge, settings.judge_model), cache, ScoreTally())
    finally:
        cache.close()
    ratings = [r.get("scores", {}).get("judge") for r in rows]
    groups, at = [], 0
    for group in answers:
        groups.append(ratings[at : at + len(group)])
        at += len(group)
    return groups


def repaired_answer(prompt: dict[str, Any], scored: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best ended answer edited to pass the prompt's checks, when no answer passes them all and the
    edit can (None otherwise). It carries the sample it came from."""
    checks = prompt.get("checks")
    if not checks or any(a["rewards"].get("checks", 0) >= 1.999 for a in scored):
        return None
    for answer in sorted(scored, key=lambda a: -a["reward"]):
        if answer.get("finish_reason") == "length":
            continue
        text = repair(answer["text"], checks)
        if text is not None:
            return {"text": text, "finish_reason": "stop", "repaired_from": answer["sample"]}
    return None


def _pair(prompt: dict[str, Any], chosen: str, rejected: str, **extra: Any) -> dict[str, Any]:
    """A pair record: the prompt, the two answers, `extra` (rewards, how the chosen one was made), and the
    prompt's id, language and checks."""
    pair = {"instruction": prompt["instruction"], "input": prompt.get("input", ""), "chosen": chosen,
            "rejected": rejected, **extra}  # fmt: skip
    pair.update({key: prompt[key] for key in ("id", "language", "checks") if key in prompt})
    return pair


def choose_pair(
    prompt: dict[str, Any], group: list[dict[str, Any]], min_margin: float, minimal: bool = False
) -> dict[str, Any] | None:
    """The best and the worst of scored answers as a pair, or None (too close, or the best did not end).
    `minimal`: a repaired best answer is paired with its source instead of the worst."""
    ranked = sorted(group, key=lambda a: -a["reward"])  # stable: the earlier sample wins a tie
    best, worst = ranked[0], ranked[-1]
    if minimal and "repaired_from" in best:
        worst = group[best["repaired_from"]]
    if best["reward"] - worst["reward"] < min_margin or best.get("finish_reason") == "length":
        return None
    repaired = {"chosen_repaired": True} if "repaired_from" in best else {}
    return _pair(prompt, best["text"], worst["text"], chosen_reward=round(best["reward"], 4),
                 rejected_reward=round(worst["reward"], 4), **repaired)  # fmt: skip


def reference_pair(prompt: dict[str, Any], group: list[dict[str, Any]]) -> dict[str, Any]:
    """The prompt's reference answer as chosen, the lowest-rewarded of the model's answers as rejected."""
    worst = min(group, key=lambda a: a["reward"])  # min keeps the earlier sample on a tie
    return _pair(prompt, prompt["output"], worst["text"], rejected_reward=round(worst["reward"], 4),
                 chosen_reference=True)  # fmt: skip


def stop_pair(prompt: dict[str, Any], group: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first of the model's answers that ran out of tokens, cut before its loop (chosen, it ends) vs
    the whole of it; None when no answer ran out, or no cut keeps enough text or as many passed checks."""
    checks = prompt.get("checks")

    def passed(text: str) -> int:
        return sum(p["strict"] for p in check_prompt(text, checks)["instructions"]) if checks else 0

    for answer in group:
        if answer.get("finish_reason") != "length" or "repaired_from" in answer:
            continue
        cut = cut_loop(answer["text"])
        if cut is not None and passed(cut) >= passed(answer["text"]):
            return _pair(prompt, cut, answer["text"], chosen_cut=True)
    return None


def build_pairs(
    prompts: list[dict[str, Any]],
    settings: PairSettings,
    out_dir: str | Path,
    trl: bool = False,
    answers: str | Path | None = None,
) -> dict[str, Any]:
    """Sample, score and pair; returns the summary (also in summary.json). `answers`: the answer cache to
    read and extend (default OUT/answers.jsonl): runs that pair differently can share one sampling."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not prompts:
        raise PacosError("no prompts to answer")
    started = time.monotonic()
    cache_path = Path(answers) if answers else out / "answers.jsonl"
    if not cache_path.parent.is_dir():
        raise PacosError(f"--answers {cache_path}: no such folder {cache_path.parent}")
    cache = KeyedCache(cache_path)
    try:
        answers = sample_answers(prompts, settings, cache)
    finally:
        cache.close()
    ratings = (
        _judge_ratings(prompts, answers, settings, out)
        if "judge" in settings.rewards
        else [[None] * len(group) for group in answers]
    )
    samples, pairs = [], []
    for prompt, group, judged in zip(prompts, answers, ratings):
        scored = []
        for j, (answer, rating) in enumerate(zip(group, judged)):
            parts = answer_rewards(prompt, answer, settings.rewards, rating)
            reward = sum(settings.weights.get(name, 1.0) * value for name, value in parts.items())
            scored.append({**answer, "sample": j, "rewards": parts, "reward": reward})
        fixed = repaired_answer(prompt, scored) if settings.repair else None
        if fixed is not None:
            # The same content as its source: the same judge rating.
            parts = answer_rewards(prompt, fixed, settings.rewards, judged[fixed["repaired_from"]])
            reward = sum(settings.weights.get(name, 1.0) * value for name, value in parts.items())
            scored.append({**fixed, "sample": len(scored), "rewards": parts, "reward": reward})
        samples.append({"id": prompt.get("id"), "instruction": prompt["instruction"], "answers": scored})
        if settings.reference_chosen and prompt.get("output") and not prompt.get("checks"):
            pair = reference_pair(prompt, scored)
        else:
            pair = choose_pair(prompt, scored, settings.min_margin, settings.minimal)
        if pair is not None:
            pairs.append(pair)
        if settings.stop_pairs and (stopped := stop_pair(prompt, scored)) is not None:
            pairs.append(stopped)
    write_records(samples, out / "samples.jsonl")
    if pairs:
        write_records(pairs, out / "pairs.jsonl")
        if trl:
            write_records([to_trl(p) for p in pairs], out / "pairs-trl.jsonl")
    every = [a for s in samples for a in s["answers"]]
    flat = [a for a in every if "repaired_from" not in a]  # the model's own answers
    summary = {
        "prompts": len(prompts),
        "answers": len(flat),
        "pairs": len(pairs),
        "repaired": len(every) - len(flat),
        "pairs_with_repaired_chosen": sum(p.get("chosen_repaired", False) for p in pairs),
        "pairs_with_reference_chosen": sum(p.get("chosen_reference", False) for p in pairs),
        "stop_pairs": sum(p.get("chosen_cut", False) for p in pairs),
        "mean_reward": round(sum(a["reward"] for a in flat) / len(flat), 4),
        "ended": round(sum(a.get("finish_reason") != "length" for a in flat) / len(flat), 4),
        "settings": {k: v for k, v in asdict(settings).items()},
        "seconds": round(time.monotonic() - started, 1),
    }
    if any("checks" in a["rewards"] for a in flat):
        with_checks = [a for a in flat if "checks" in a["rewards"]]
        summary["checks_all_passed"] = round(sum(a["rewards"]["checks"] >= 1.999 for a in with_checks)
                                             / len(with_checks), 4)  # fmt: skip
    write_json(out / "summary.json", summary)
    return summary
