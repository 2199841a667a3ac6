"""`pacos eval --model M --prompts FILE`: answers for an instruction set, and metrics against references."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacos.data.io import read_records, write_records
from pacos.evaluate.metrics import Embedder, prompt_language, reference_metrics
from pacos.fileio import KeyedCache, write_json
from pacos.llm.answers import Decoding, answer_records
from pacos.models import cache_dir


@dataclass(frozen=True)
class PairwiseSettings:
    """Pairwise judging of a model's answers: by `judge` (http(s)://HOST:PORT/v1 or local:NAME), against
    `baseline` (another model, answering with `baseline_template`, or "references": the outputs)."""

    judge: str
    judge_model: str | None = None  # the judge endpoint's model name
    baseline: str = "references"
    baseline_template: str | None = None
    max_answer_chars: int | None = None  # answers cut for the judge
    # Show the judge each prompt's reference output (MT-Bench's reference-guided judging); with baseline
    # "references" the reference is already one of the two answers, so it is not shown again.
    reference_guided: bool = False


def cached_answers(
    model: str,
    records: list[dict[str, Any]],
    decoding: Decoding,
    cache_path: str | Path | None,
    **options: Any,
) -> tuple[list[dict[str, Any]], int]:
    """`answer_records` through the shared on-disk answer cache ($PACOS_CACHE/eval/answers.jsonl)."""
    cache = KeyedCache(cache_path or cache_dir() / "eval" / "answers.jsonl")
    try:
        return answer_records(model, records, decoding, cache=cache, **options)
    finally:
        cache.close()


def evaluate_prompts(
    model: str,
    prompts: str,
    out_dir: str | Path,
    decoding: Decoding | None = None,
    *,
    served_model: str | None = None,
    template: str | None = None,
    embeddings: bool = True,
    cache_path: str | Path | None = None,
    judge: PairwiseSettings | None = None,
) -> dict[str, Any]:
    """Answer every record of `prompts` (its `output`, where present, is the reference) and write
    `answers.jsonl` and `metrics.json` into `out_dir`; with a `judge`, also judge the answers against the
    `baseline` model's (or, for "references", the records' outputs) and write `annotations.json`."""
    decoding = decoding or Decoding()
    records = read_records(prompts, require_output=False)
    answers, generated = cached_answers(
        model, records, decoding, cache_path, served_model=served_model, template=template
    )
    references = [r.get("output") or None for r in records]
    embedder = Embedder() if embeddings and any(references) else None
    metrics = reference_metrics(answers, references, embedder)
    languages = [prompt_language(r) for r in records]
    if len(set(languages)) > 1:  # each language's own numbers (ROUGE-L of Chinese is on characters)
        metrics["by_language"] = {
            lang: reference_metrics(
                [a for a, g in zip(answers, languages, strict=True) if g == lang],
                [r for r, g in zip(references, languages, strict=True) if g == lang],
                embedder,
            )
            for lang in sorted(set(languages))
        }
    metrics = {
        "model": model,
        "prompts": prompts,
        "decoding": vars(decoding),
        "generated": generated,
        **metrics,
    }
    out = Path(out_dir)
    if judge:
        metrics["judge"] = _judge(model, records, answers, decoding, out, cache_path, judge)
    rows = [
        {
            **record,
            "answer": a["text"],
            "finish_reason": a["finish_reason"],
            "new_tokens": a["completion_tokens"],
        }
        for record, a in zip(records, answers, strict=True)
    ]
    write_records(rows, out / "answers.jsonl")
    write_json(out / "metrics.json", metrics)
    return metrics


def _judge(
    model: str,
    records: list[dict[str, Any]],
    answers: list[dict[str, Any]],
    decoding: Decoding,
    out: Path,
    cache_path: str | Path | None,
    settings: PairwiseSettings,
) -> dict[str, Any]:
    """Win rates of `model` (model 2) against the baseline (model 1) by the judge, both orders per pair."""
    from pacos.errors import PacosError
    from pacos.evaluate.judge import alpaca_eval_annotations, calibrate_position, judge_pairs, win_rates
    from pacos.llm.client import make_llm
    from pacos.llm.config import ClientConfig

    judge, baseline = settings.judge, settings.baseline
    if baseline == "references":
        pairs = [(r, a) for r, a in zip(records, answers, strict=True) if r.get("output")]
        if not pairs:
            raise PacosError("--baseline references: the prompts have no outputs to compare with")
        records, answers = [r for r, _ in pairs], [a for _, a in pairs]
        baseline_texts = [r["output"] for r in records]
    else:
        base, _ = cached_answers(baseline, records, decoding, cache_path, template=settings.baseline_template)
        baseline_texts = [a["text"] for a in base]
    texts = [a["text"] for a in answers]
    instructions = [r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "") for r in records]
    cache = KeyedCache(Path(cache_path).with_name("judgments.jsonl") if cache_path else
                        cache_dir() / "eval" / "judgments.jsonl")  # fmt: skip
    weights = ClientConfig(dtype=decoding.dtype, quantize=decoding.quantize)
    try:
        judgments, calls = judge_pairs(
            lambda: make_llm(judge, settings.judge_model, weights, None),
            instructions, baseline_texts, texts, cache, f"{judge}#{settings.judge_model or ''}",
            max_answer_chars=settings.max_answer_chars,
            references=[r.get("output") for r in records]
            if settings.reference_guided and baseline != "references"
            else None,
            top_logprobs=20 if judge.startswith("local:") else 5,  # OpenAI's completions API gives 5 at most
        )  # fmt: skip
    finally:
        cache.close()
    rates = win_rates(judgments, [len(t) for t in baseline_texts], [len(t) for t in texts])
    # The annotations carry the verdicts the win rate counts: position-calibrated where logprobs allow.
    calibrated, _ = calibrate_position(judgments)
    rows = alpaca_eval_annotations(instructions, baseline_texts, texts, calibrated, baseline, model, judge)
    write_json(out / "annotations.json", rows)
    return {"baseline": baseline, "judge": judge, "judge_calls": calls,
            "max_answer_chars": settings.max_answer_chars, **rates}  # fmt: skip


def _first_per_language(prompts: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    if limit is None:
        return prompts
    counts: dict[str, int] = {}
    subset = []
    for prompt in prompts:
        counts[prompt["language"]] = counts.get(prompt["language"], 0) + 1
        if counts[prompt["language"]] <= limit:
            subset.append(prompt)
    return subset


def evaluate_ifeval(
    model: str,
    out_dir: str | Path,
    decoding: Decoding | None = None,
    *,
    language: str | None = None,
    per_language: int | None = None,
    prompts_path: str | Path | None = None,
    served_model: str | None = None,
    template: str | None = None,
    cache_path: str | Path | None = None,
) -> dict[str, Any]:
    """Verifiable instruction following on the bundled prompt set (or `prompts_path`): every answer is
    checked strictly and loosely; writes `ifeval.jsonl` (per prompt) and returns the scores.
    `per_language`: only the first N prompts of each language (a quick, fixed subset)."""
    from pacos.data.verifiable import load_ifeval_prompts
    from pacos.text.checks import check_prompt, score

    prompts = _first_per_language(load_ifeval_prompts(language, prompts_path), per_language)
    records = [{"instruction": p["instruction"], "input": ""} for p in prompts]
    answers, generated = cached_answers(
        model, records, decoding or Decoding(), cache_path, served_model=served_model, template=template
    )
    results = [check_prompt(a["text"], p["checks"]) for p, a in zip(prompts, answers, strict=True)]
    rows = [
        {"id": p["id"], "language": p["language"], "instruction": p["instruction"], "answer": a["text"], **r}
        for p, a, r in zip(prompts, answers, results, strict=True)
    ]
    write_records(rows, Path(out_dir) / "ifeval.jsonl")
    by_language = {
        lang: score([r for r, p in zip(results, prompts, strict=True) if p["language"] == lang])
        for lang in sorted({p["language"] for p in prompts})
    }
    return {"generated": generated, **score(results), "by_language": by_language}


def evaluate_model(
    model: str,
    out_dir: str | Path,
    *,
    prompts: str | None = None,
    data: str | None = None,
    ifeval: bool = False,
    ifeval_per_language: int | None = None,
    decoding: Decoding | None = None,
    served_model: str | None = None,
    template: str | None = None,
    embeddings: bool = True,
    cache_path: str | Path | None = None,
    judge: PairwiseSettings | None = None,
) -> dict[str, Any]:
    """Everything `pacos eval` measures for one model, into `out_dir/metrics.json` (answers, ifeval.jsonl
    and annotations.json beside it): answers to `prompts` with reference metrics (and the judge), the
    response loss on `data`, verifiable instruction following with `ifeval`."""
    from pacos.errors import PacosError

    if not (prompts or data or ifeval):
        raise PacosError("nothing to evaluate: pass --prompts FILE, --data FILE and/or --ifeval")
    if judge and not prompts:
        raise PacosError("--judge compares answers: pass --prompts FILE")
    if data and model.startswith(("http://", "https://")):
        raise PacosError("--data needs the model's weights: pass a local model, not an endpoint")
    decoding = decoding or Decoding()
    out = Path(out_dir)
    metrics: dict[str, Any] = {"model": model}
    if prompts and ifeval:  # both sets in one batch (one model load); the steps below read the cache
        from pacos.data.verifiable import load_ifeval_prompts

        checks = _first_per_language(load_ifeval_prompts(), ifeval_per_language)
        everything = read_records(prompts, require_output=False)
        everything += [{"instruction": p["instruction"], "input": ""} for p in checks]
        cached_answers(model, everything, decoding, cache_path, served_model=served_model, template=template)
    if prompts:
        metrics = evaluate_prompts(
            model, prompts, out, decoding, served_model=served_model, template=template,
            embeddings=embeddings, cache_path=cache_path, judge=judge,
        )  # fmt: skip
    if data:
        from pacos.evaluate.loss import dataset_loss

        metrics["data_loss"] = dataset_loss(model, data, template=template)
        write_json(out / "metrics.json", metrics)
    if ifeval:
        metrics["ifeval"] = evaluate_ifeval(
            model, out, decoding, per_language=ifeval_per_language, served_model=served_model,
            template=template, cache_path=cache_path,
        )  # fmt: skip
    write_json(out / "metrics.json", metrics)
    return metrics
