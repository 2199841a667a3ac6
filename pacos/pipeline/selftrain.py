"""`pacos selftrain`: iterative self-training with pseudo-labels (ReST-EM's grow/improve loop, Humpback's
self-curation), every round's stages resumable.

Round 0 trains on the labelled data alone. Each later round K:
1. label: the latest model answers every pool instruction `label.samples` times (batched in the engine,
   appended to round-K/label/labels.jsonl, so a kill loses at most one batch);
2. keep: each sample must end with EOS, pass `pacos data clean`'s drop rules, the ifeval checks the pool
   record carries and `min_confidence`; an instruction's best sample (judge rating, then confidence) may
   be rated by a judge; then the top fraction. Counts of every rejection reason are kept;
3. train: labelled + kept pseudo-labels, from the base (ReST-EM) or from the last round's model;
4. eval: the held-out set, greedy (`pacos eval`'s metrics);
5. stop when the metric has not improved by `min_delta` for `patience` rounds, when a round keeps nothing,
   or after `max_rounds`. The best round's model is reported (and linked as OUT/best).

Stages are `pacos quickstart`'s: OUT/round-K/<stage>/stage.json holds the digest of its inputs, so a rerun
skips what finished and resumes the stage that was killed.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from pacos.data.io import read_records, write_records
from pacos.fileio import AppendLog, read_jsonl_repairing, write_json
from pacos.pipeline.selftrain_config import METRICS, SelfTrainConfig
from pacos.pipeline.stages import file_digest, run_stage

_LABEL_BATCH = 32  # instructions per engine call: the unit a killed label stage loses


def _say(message: str) -> None:
    print(f"[selftrain] {message}", flush=True)


def _digest(path: Path) -> str:
    return file_digest(path) if path.exists() else "-"


def label(
    config: SelfTrainConfig, model: str, pool: list[dict[str, Any]], out: Path, seed: int
) -> dict[str, Any]:
    """Pseudo-labels: `samples` answers per pool instruction, with their mean token log-probability."""
    from pacos.infer import SamplingParams, load_engine
    from pacos.llm.answers import prompt_ids

    path = out / "labels.jsonl"
    done = {(r["selftrain"]["index"], r["selftrain"]["sample"]) for r in read_jsonl_repairing(path)}
    todo = [(i, j) for i in range(len(pool)) for j in range(config.label.samples) if (i, j) not in done]
    if todo:
        engine = load_engine(
            model, dtype=config.label.dtype, quantize=config.label.quantize, template=config.template
        )
        engine.max_batch_size = max(engine.max_batch_size, min(len(todo), _LABEL_BATCH))
        for start in range(0, len(todo), _LABEL_BATCH):
            chunk = todo[start : start + _LABEL_BATCH]
            records = [pool[i] for i, _ in chunk]
            params = [
                SamplingParams(
                    max_new_tokens=config.label.max_new_tokens,
                    temperature=config.label.temperature,
                    top_p=config.label.top_p,
                    seed=seed * 100_003 + i * 101 + j,
                    logprobs=0,
                )
                for i, j in chunk
            ]
            completions = engine.generate(prompt_ids(engine, records), params)
            log = AppendLog(path)
            for (i, j), record, c in zip(chunk, records, completions, strict=True):
                confidence = sum(t.logprob for t in c.logprobs) / max(1, len(c.logprobs))
                log.write({
                    **{k: v for k, v in record.items() if k not in ("output", "selftrain")},
                    "output": c.text.strip(),
                    "selftrain": {"index": i, "sample": j, "confidence": confidence,
                                  "finish_reason": c.finish_reason, "tokens": c.completion_tokens},
                })  # fmt: skip
            log.close()
            _say(f"labelled {min(start + _LABEL_BATCH, len(todo))}/{len(todo)} samples")
    return {"samples": len(pool) * config.label.samples, "generated": len(todo)}


def _sample_problem(config: SelfTrainConfig, row: dict[str, Any], cleaner: Any) -> str | None:
    """Why a sample cannot be kept, or None."""
    from pacos.text.checks import check_prompt

    info = row["selftrain"]
    if config.keep.require_eos and info["finish_reason"] != "stop":
        return "no EOS within max_new_tokens"
    if config.keep.clean:
        verdict = cleaner(row)
        if verdict.rule:
            return f"clean: {verdict.rule}"
    if (
        config.keep.verifiable
        and row.get("checks")
        and not check_prompt(row["output"], row["checks"])["strict"]
    ):
        return "verifiable checks failed"
    if config.keep.min_confidence is not None and info["confidence"] < config.keep.min_confidence:
        return "confidence below min_confidence"
    return None


def keep(config: SelfTrainConfig, labelled: list[dict[str, Any]], labels: Path, out: Path) -> dict[str, Any]:
    """The kept pseudo-labels (kept.jsonl) and the round's training set (train.jsonl)."""
    from pacos.data.clean import CleanConfig, RecordCleaner

    cleaner = RecordCleaner(CleanConfig())
    by_instruction: dict[int, list[dict[str, Any]]] = {}
    for row in read_jsonl_repairing(labels):
        by_instruction.setdefault(row["selftrain"]["index"], []).append(row)
    rejected: Counter[str] = Counter()
    best: list[dict[str, Any]] = []
    for rows in by_instruction.values():
        problems = [_sample_problem(config, r, cleaner) for r in rows]
        passing = [r for r, p in zip(rows, problems, strict=True) if p is None]
        if not passing:
            rejected[Counter(problems).most_common(1)[0][0]] += 1
            continue
        best.append(max(passing, key=lambda r: r["selftrain"]["confidence"]))
    score_key = "confidence"
    if config.keep.judge and best:
        from pacos.score import score_records
        from pacos.score.judge import RatingSettings

        score_records(
            best, judge=RatingSettings(config.keep.judge, config.keep.judge_model), cache_dir=out / "judge"
        )
        rated = [r for r in best if (r.get("scores") or {}).get("judge") is not None]
        rejected["no usable judge rating"] += len(best) - len(rated)
        best = [r for r in rated if r["scores"]["judge"] >= config.keep.min_judge]
        rejected["judge rating below min_judge"] += len(rated) - len(best)
        score_key = "judge"

    def score(r: dict[str, Any]) -> float:
        return r["scores"]["judge"] if score_key == "judge" else r["selftrain"]["confidence"]

    best.sort(key=score, reverse=True)
    if config.keep.top_fraction is not None and best:
        n = max(1, round(config.keep.top_fraction * len(best)))
        rejected["below the top fraction"] += len(best) - n
        best = best[:n]
    write_records(best, out / "kept.jsonl")
    write_records(
        labelled + [{k: v for k, v in r.items() if k != "selftrain"} for r in best], out / "train.jsonl"
    )
    return {
        "instructions": len(by_instruction),
        "kept": len(best),
        "rejected": dict(rejected),
        "score": score_key,
    }


def train_round(
    config: SelfTrainConfig, start_model: str, data: Path, held_out: str, out: Path
) -> dict[str, Any]:
    from pacos.train.checkpoint import list_checkpoints
    from pacos.train.config import TrainConfig
    from pacos.train.run import train

    if (Path(start_model) / "adapter_config.json").exists():  # continuing: a fresh LoRA on the merged model
        from pacos.export.hf import export_hf

        merged = out.parent / "start-model"
        if not (merged / "config.json").exists():
            export_hf(start_model, merged)
        start_model = str(merged)
    settings = TrainConfig(
        **{"template": config.template, **config.train},
        model=start_model,
        data=str(data),
        val_data=held_out,
        output_dir=str(out),
    )
    result = train(settings, resume=bool(list_checkpoints(out / "checkpoints")))
    return {"steps": result.steps, "final_loss": result.final_loss, "held_out_loss": result.best_val_loss,
            "seconds": round(result.seconds, 1), "examples": result.train_examples}  # fmt: skip


def evaluate_round(config: SelfTrainConfig, model: Path, held_out: str, out: Path) -> dict[str, Any]:
    from pacos.evaluate.run import evaluate_model
    from pacos.infer.quantize import decoding_weights
    from pacos.llm.answers import Decoding

    dtype, quantize = decoding_weights(config.eval.dtype, config.eval.quantize)
    metrics = evaluate_model(
        str(model), out, prompts=held_out, data=held_out, template=config.template,
        decoding=Decoding(max_new_tokens=config.eval.max_new_tokens, dtype=dtype, quantize=quantize),
        embeddings=config.eval.embeddings, cache_path=out / "answers-cache.jsonl",
    )  # fmt: skip
    return {
        "eos_rate": metrics.get("eos_rate"),
        "rouge_l": metrics.get("rouge_l"),
        "embedding_similarity": metrics.get("embedding_similarity"),
        "held_out_loss": (metrics.get("data_loss") or {}).get("loss"),
    }


def _improved(value: float | None, best: float | None, metric: str, min_delta: float) -> bool:
    if value is None:
        return False
    if best is None:
        return True
    return value > best + min_delta if METRICS[metric] else value < best - min_delta


def run_selftrain(config: SelfTrainConfig) -> dict[str, Any]:
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    labelled = read_records(config.labelled)
    pool = read_records(config.pool, require_output=False)
    held_out_records = read_records(config.held_out)
    held_out = out / "held_out.jsonl"
    write_records(held_out_records, held_out)  # one fixed copy: every round evaluates the same records
    (out / "inputs").mkdir(exist_ok=True)
    write_records(labelled, out / "inputs" / "labelled.jsonl")
    write_records(pool, out / "inputs" / "pool.jsonl")
    # The pool is an input of labelling only: a new pool reuses round 0 (the labelled data alone).
    inputs = {"data": file_digest(out / "inputs" / "labelled.jsonl"), "held_out": file_digest(held_out),
              "template": config.template, "train": config.train, "seed": config.seed}  # fmt: skip

    rounds: list[dict[str, Any]] = []
    best_value: float | None = None
    best_round = since_best = 0
    stop = f"max_rounds ({config.max_rounds}) reached"
    latest: Path | None = None
    for k in range(config.max_rounds + 1):
        row = run_round(config, k, out, inputs, labelled, pool, held_out, latest)
        rounds.append(row)
        if "train" not in row:
            stop = f"round {k} kept no pseudo-labels"
            break
        latest = out / f"round-{k}" / "train"
        value = row["eval"].get(config.metric)
        _say(
            f"round {k}: {config.metric} {value}" + (f", kept {row['keep']['kept']}" if "keep" in row else "")
        )
        if _improved(value, best_value, config.metric, config.min_delta):
            best_value, best_round, since_best = value, k, 0
            continue
        since_best += 1
        if since_best >= config.patience:
            stop = f"{config.metric} did not improve by {config.min_delta} for {config.patience} round(s)"
            break

    summary = {
        "metric": config.metric,
        "best_round": best_round,
        "best_value": best_value,
        "best_model": str(out / f"round-{best_round}" / "train"),
        "stopped": stop,
        "rounds": rounds,
    }
    write_json(out / "rounds.json", summary)
    (out / "rounds.md").write_text(rounds_table(summary), encoding="utf-8")
    plot_rounds(summary, out / "rounds.png")
    link = out / "best"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(f"round-{best_round}/train", link)
    _say(
        f"stopped: {stop}; best round {best_round} ({config.metric} {best_value}); table {out / 'rounds.md'}"
    )
    return summary


def run_round(
    config: SelfTrainConfig,
    k: int,
    out: Path,
    inputs: dict[str, Any],
    labelled: list[dict[str, Any]],
    pool: list[dict[str, Any]],
    held_out: Path,
    latest: Path | None,
) -> dict[str, Any]:
    """One round's stages (each skipped when it finished with the same inputs); no "train" key when the
    round kept nothing."""
    round_dir = out / f"round-{k}"
    row: dict[str, Any] = {"round": k}
    data = out / "inputs" / "labelled.jsonl"
    if k > 0:
        assert latest is not None
        labels = round_dir / "label" / "labels.jsonl"
        row["label"] = run_stage(
            round_dir,
            "label",
            {
                **inputs,
                "pool": file_digest(out / "inputs" / "pool.jsonl"),
                "model": _digest(latest),
                "label": config.label.model_dump(),
                "round": k,
            },
            lambda d: label(config, str(latest), pool, d, config.seed + k),
        )
        row["keep"] = run_stage(
            round_dir,
            "keep",
            {**inputs, "labels": _digest(labels), "keep": config.keep.model_dump()},
            lambda d: keep(config, labelled, labels, d),
        )
        if row["keep"]["kept"] == 0:
            return row
        data = round_dir / "keep" / "train.jsonl"
    start = str(latest) if config.retrain_from == "previous" and latest is not None else config.model
    row["train"] = run_stage(
        round_dir,
        "train",
        {**inputs, "data_file": _digest(data), "start": start if start == config.model else _digest(latest)},
        lambda d: train_round(config, start, data, str(held_out), d),
    )
    model = round_dir / "train"
    row["eval"] = run_stage(
        round_dir,
        "eval",
        {**inputs, "model": _digest(model), "eval": config.eval.model_dump()},
        lambda d: evaluate_round(config, model, str(held_out), d),
    )
    return row


def rounds_table(summary: dict[str, Any]) -> str:
    lines = [
        "| round | kept / instructions | rejected (by reason) | training examples | held-out loss "
        "| EOS rate | ROUGE-L | embedding similarity |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(x: Any, pattern: str = "{:.3f}") -> str:
        return "-" if x is None else pattern.format(x)

    for r in summary["rounds"]:
        keep_info = r.get("keep") or {}
        kept = f"{keep_info['kept']} / {keep_info['instructions']}" if keep_info else "- (labelled only)"
        reasons = ", ".join(f"{k}: {v}" for k, v in (keep_info.get("rejected") or {}).items()) or "-"
        ev, tr = r.get("eval") or {}, r.get("train") or {}
        mark = " (best)" if r["round"] == summary["best_round"] else ""
        lines.append(
            f"| {r['round']}{mark} | {kept} | {reasons} | {fmt(tr.get('examples'), '{}')} | "
            f"{fmt(ev.get('held_out_loss'))} | {fmt(ev.get('eos_rate'), '{:.1%}')} | "
            f"{fmt(ev.get('rouge_l'))} | {fmt(ev.get('embedding_similarity'))} |"
        )
    return "\n".join(lines) + f"\n\nStopped: {summary['stopped']}. Best: round {summary['best_round']}.\n"


def plot_rounds(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rounds"] if "eval" in r]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    metric = summary["metric"]
    top.plot([r["round"] for r in rows], [r["eval"].get(metric) for r in rows], marker="o")
    top.set_ylabel(metric.replace("_", " "))
    top.set_title(f"self-training: {metric} per round (best: {summary['best_round']})")
    kept = [(r["round"], r["keep"]["kept"]) for r in summary["rounds"] if "keep" in r]
    bottom.bar([k for k, _ in kept], [n for _, n in kept])
    bottom.set_ylabel("pseudo-labels kept")
    bottom.set_xlabel("round")
    bottom.set_xticks([r["round"] for r in summary["rounds"]])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
