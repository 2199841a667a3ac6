"""`pacos quickstart`: the whole Alpaca loop on embedded defaults, on a laptop CPU, in about 15 minutes.

1. data: clean the bundled seed tasks (English and Chinese) and split off held-out tasks first, so the
   teacher never sees them and nothing generated can copy them;
2. generate: new examples from the remaining English seed tasks with an embedded teacher (`pacos generate`);
3. mix: clean them, drop near-duplicates of seed or held-out tasks, mix them with the seed tasks, and drop
   every training record that overlaps a held-out task or an ifeval prompt (pacos data contamination);
4. model: LoRA on Gemma 3 270M (base), Alpaca template, loss on the response only;
5. pairs: verifiable prompts built from the training seed tasks (never the held-out ones), k answers each
   from the tuned model, scored by programs (their checks, EOS, loops), best vs worst as pairs;
6. prefer: DPO on those pairs, a new LoRA on the tuned model (its reference: the tuned model itself);
7. eval: base vs tuned vs tuned + preference on the held-out tasks (reference metrics, verifiable
   instructions, pairwise judge) and the report.
Every stage writes under OUT/<stage>/ and is skipped on a rerun when its inputs did not change; a killed
run resumes in the stage it was in (see stages.py). Settings: recipes/quickstart.yaml (built in here).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from pacos.data.clean import CleanConfig, clean_records
from pacos.data.contamination import (
    IFEVAL,
    NGRAM,
    ROUGE,
    ContaminationIndex,
    eval_prompts_of,
    find_contamination,
    load_eval_set,
    split_clean,
)
from pacos.data.dedup import dedup_records
from pacos.data.io import read_records, write_records
from pacos.data.seeds import builtin_paths
from pacos.data.split import split_records
from pacos.data.stats import compute_stats, plot_stats
from pacos.errors import PacosError
from pacos.fileio import atomic_open, write_json
from pacos.pipeline.quickstart_config import QuickstartConfig
from pacos.pipeline.stages import file_digest, run_stage

VERSION = 4  # bump when a stage's code changes what it writes, so old outputs are not reused


def _say(stage: str, message: str) -> None:
    print(f"[{stage}] {message}", flush=True)


def data_stage(config: QuickstartConfig, out: Path) -> dict[str, Any]:
    """Clean each language's seed tasks and split off `held_out` of them (whole prompt groups)."""
    seeds, seeds_en, held_out, counts = [], [], [], {}
    for language in ("en", "zh"):
        cleaned = clean_records(read_records(f"seed-tasks-{language}"), CleanConfig(fix=True))
        records, wanted = cleaned.kept, getattr(config.held_out, language)
        if wanted >= len(records):
            raise PacosError(f"held_out.{language}={wanted}: only {len(records)} {language} seed tasks")
        split = split_records(records, wanted / len(records), 0.0, config.train.seed)
        seeds += split["train"]
        seeds_en += split["train"] if language == "en" else []
        held_out += split["val"]
        counts[language] = {"seed_tasks": len(records), "held_out": len(split["val"])}
    write_records(seeds, out / "seeds.jsonl")
    write_records(seeds_en, out / "seeds-en.jsonl")  # the teacher continues English lists
    write_records(held_out, out / "held_out.jsonl")
    summary = ", ".join(f"{v['held_out']} of {v['seed_tasks']} {k}" for k, v in counts.items())
    _say("data", f"seed tasks cleaned; held out for evaluation: {summary} -> {out / 'held_out.jsonl'}")
    return {"languages": counts, "seeds": len(seeds), "held_out": len(held_out)}


def generate_stage(config: QuickstartConfig, out: Path, seeds: Path) -> dict[str, Any]:
    from rich.console import Console

    from pacos.generate.report import GenerateProgress, summary_table
    from pacos.generate.run import generate

    settings = config.generate.model_copy(update={"seeds": str(seeds), "out_dir": str(out)})
    _say("generate", f"{settings.num} new examples from the seed tasks, teacher {settings.teacher}")
    console = Console(stderr=True)
    summary = generate(settings, progress=GenerateProgress(settings.num, console))
    console.print(summary_table(summary))
    _say(
        "generate",
        f"{summary['accepted']} accepted from {summary['requests']} requests "
        f"({summary['stopped']}) -> {out / 'data.json'}",
    )
    keys = ("accepted", "rejected", "requests", "stopped", "rejected_by_reason", "seconds")
    return {k: summary.get(k) for k in keys}


def mix_stage(config: QuickstartConfig, out: Path, data_dir: Path, generated: Path) -> dict[str, Any]:
    """Generated examples, cleaned and without near-copies of seed or held-out tasks, plus the seeds."""
    seeds = read_records(data_dir / "seeds.jsonl")
    held_out = read_records(data_dir / "held_out.jsonl")
    new = read_records(generated, allow_empty=True) if generated.exists() else []
    cleaned = clean_records(new, CleanConfig(fix=True))
    # Held-out tasks first: whatever is too close to one is dropped, not the held-out task.
    deduped = dedup_records([*held_out, *seeds, *cleaned.kept], threshold=0.7, tokenizer="cjk")
    held_keys = {(r["instruction"], r.get("input", "")) for r in held_out}
    train = [r for r in deduped.kept if (r["instruction"], r.get("input", "")) not in held_keys]
    # Nothing trained on may overlap what is evaluated: the held-out tasks and the ifeval prompts.
    index = ContaminationIndex([*eval_prompts_of(held_out, "held_out"), *load_eval_set(IFEVAL)])
    train, contaminated = split_clean(train, find_contamination(train, index))
    random.Random(config.train.seed).shuffle(train)
    write_records(train, out / "train.jsonl")
    write_records([*cleaned.rejected, *deduped.rejected, *contaminated], out / "rejected.jsonl")
    stats = compute_stats(train)
    plots = plot_stats(stats, out)
    stats.pop("_lengths")
    write_json(out / "stats.json", stats)
    generated_ids = {id(r) for r in cleaned.kept}  # dedup keeps the very record objects
    kept_new = sum(1 for r in train if id(r) in generated_ids)
    _say(
        "mix",
        f"{len(new)} generated: {len(cleaned.rejected)} failed cleaning, "
        f"{len(deduped.rejected)} near-duplicates dropped, {len(contaminated)} records overlapping held-out "
        f"or ifeval prompts dropped; training set {len(train)} examples "
        f"({kept_new} generated, {stats['chinese_share']:.0%} Chinese) -> {out / 'train.jsonl'}; plots: "
        + ", ".join(p.name for p in plots),
    )
    return {
        "generated": len(new),
        "kept_generated": kept_new,
        "train": len(train),
        "cleaning_rejects": len(cleaned.rejected),
        "near_duplicates": len(deduped.rejected),
        "contaminated": len(contaminated),
    }


def train_stage(config: QuickstartConfig, out: Path, train_path: Path, held_out: Path) -> dict[str, Any]:
    from pacos.train.checkpoint import list_checkpoints
    from pacos.train.run import train

    settings = config.train.model_copy(
        update={
            "data": str(train_path),
            "val_data": str(held_out),
            "val_fraction": 0.0,
            "clean": None,
            "output_dir": str(out),
        }
    )
    _say(
        "train",
        f"{settings.method} fine-tuning of {settings.model}: {settings.max_steps} steps of "
        f"{settings.batch_size} examples, lr {settings.lr:g}, {settings.precision} precision",
    )
    result = train(settings, resume=bool(list_checkpoints(out / "checkpoints")))
    _say(
        "train",
        f"{result.steps} steps in {result.seconds:.0f} s, {result.tokens_per_second:.0f} tokens/s; "
        f"final loss {result.final_loss:.3f}"
        + (f", held-out loss {result.best_val_loss:.3f}" if result.best_val_loss is not None else ""),
    )
    return {
        "steps": result.steps,
        "final_loss": result.final_loss,
        "held_out_loss": result.best_val_loss,
        "seconds": result.seconds,
        "tokens_per_second": result.tokens_per_second,
    }


def pairs_stage(
    config: QuickstartConfig, out: Path, seeds: Path, model_dir: Path, train_data: Path
) -> dict[str, Any]:
    from pacos.data.verifiable import prompt_pool
    from pacos.score.pairs import PairSettings, build_pairs, parse_rewards

    settings = config.prefer
    common = {
        "model": str(model_dir),
        "k": settings.k,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "seed": config.train.seed,
        "template": config.train.template,
        "dtype": config.eval.dtype,
        "quantize": config.eval.quantize,
        "stop_pairs": settings.stop_pairs,
        "greedy": settings.greedy,
    }
    pool = prompt_pool(read_records(seeds), settings.prompts, seed=config.train.seed)
    write_records(pool, out / "prompts.jsonl")
    _say(
        "pairs",
        f"{len(pool)} verifiable prompts from the training seed tasks, {settings.k} answers each by the "
        f"tuned model, rewards: {', '.join(settings.rewards)}",
    )
    names, weights = parse_rewards(settings.rewards)
    checked = build_pairs(
        pool,
        PairSettings(
            **common,
            rewards=names,
            weights=weights,
            min_margin=settings.min_margin,
            max_new_tokens=settings.max_new_tokens,
            repair=settings.repair,
            minimal=settings.minimal and settings.repair,
        ),
        out / "checks",
    )
    _say(
        "pairs",
        f"{checked['pairs']} pairs ({checked['pairs_with_repaired_chosen']} with a repaired chosen answer, "
        f"{checked.get('stop_pairs', 0)} stop pairs); {checked.get('checks_all_passed', 0):.0%} of answers "
        f"pass all their checks, {checked['ended']:.0%} end by themselves",
    )
    parts, summary = [checked], {"pairs_with_reference_chosen": 0}
    if settings.reference_records:
        rows = [r for r in read_records(train_data) if r.get("output")]
        random.Random(config.train.seed).shuffle(rows)
        names, weights = parse_rewards(settings.reference_rewards)
        _say(
            "pairs",
            f"{min(len(rows), settings.reference_records)} training records: their reference answer "
            f"against the tuned model's worst of {settings.k}",
        )
        referenced = build_pairs(
            rows[: settings.reference_records],
            PairSettings(
                **common,
                rewards=names,
                weights=weights,
                max_new_tokens=settings.reference_max_new_tokens,
                reference_chosen=True,
            ),
            out / "reference",
        )
        parts.append(referenced)
        summary["pairs_with_reference_chosen"] = referenced.get("pairs_with_reference_chosen", 0)
    files = [out / d / "pairs.jsonl" for d in ("checks", "reference") if (out / d / "pairs.jsonl").exists()]
    pairs = [line for f in files for line in f.read_text(encoding="utf-8").splitlines(keepends=True)]
    if pairs:
        with atomic_open(out / "pairs.jsonl") as f:
            f.writelines(pairs)
    summary.update(
        prompts=sum(x["prompts"] for x in parts),
        answers=sum(x["answers"] for x in parts),
        pairs=len(pairs),
        pairs_with_repaired_chosen=checked["pairs_with_repaired_chosen"],
        stop_pairs=sum(x.get("stop_pairs", 0) for x in parts),
        checks_all_passed=checked.get("checks_all_passed"),
        ended=sum(x["ended"] * x["answers"] for x in parts) / max(1, sum(x["answers"] for x in parts)),
        seconds=sum(x["seconds"] for x in parts),
    )
    _say("pairs", f"{len(pairs)} pairs in all -> {out / 'pairs.jsonl'}")
    return summary


def prefer_stage(config: QuickstartConfig, out: Path, model_dir: Path, pairs: Path) -> dict[str, Any]:
    from pacos.train.checkpoint import list_checkpoints
    from pacos.train.metrics import read_metrics
    from pacos.train.run import train

    p = config.prefer
    settings = config.train.model_copy(
        update={
            "model": str(model_dir),
            "data": str(pairs),
            "val_data": None,
            "val_fraction": 0.0,
            "clean": None,
            "objective": p.objective,
            "preference": p.preference,
            "lr": p.lr,
            "epochs": p.epochs,
            "max_steps": None,
            "batch_size": p.batch_size,
            "micro_batch_size": p.micro_batch_size,
            "loop_examples": 0.0,
            "unlikelihood": 0.0,
            "eos_weight": 1.0,
            "eval_every": 0,
            "save_every": 10,
            "output_dir": str(out),
        }
    )
    _say(
        "prefer",
        f"{p.objective} on the pairs, a new LoRA on the tuned model, lr {p.lr:g}, {p.epochs:g} epochs",
    )
    result = train(settings, resume=bool(list_checkpoints(out / "checkpoints")))
    last = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r][-1]
    _say(
        "prefer",
        f"{result.steps} steps in {result.seconds:.0f} s; loss {result.final_loss:.3f}, reward margin "
        f"{last.get('reward_margin', float('nan')):.3f}, "
        f"preference accuracy {last.get('accuracy', float('nan')):.0%}",
    )
    return {"steps": result.steps, "final_loss": result.final_loss, "seconds": result.seconds,
            "reward_margin": last.get("reward_margin"), "accuracy": last.get("accuracy")}  # fmt: skip


def eval_stage(
    config: QuickstartConfig,
    out: Path,
    model_dir: Path,
    held_out: Path,
    prefer_dir: Path | None = None,
    notes: tuple[str, ...] = (),
) -> dict[str, Any]:
    from pacos.evaluate.report import write_report
    from pacos.evaluate.run import PairwiseSettings, evaluate_model
    from pacos.infer.quantize import decoding_weights
    from pacos.llm.answers import Decoding

    settings = config.eval
    base_model = config.train.model
    dtype, quantize = decoding_weights(settings.dtype, settings.quantize)
    common = {
        "prompts": str(held_out),
        "data": str(held_out),
        "ifeval": settings.ifeval_per_language > 0,
        "ifeval_per_language": settings.ifeval_per_language,
        "decoding": Decoding(max_new_tokens=settings.max_new_tokens, dtype=dtype, quantize=quantize),
        "template": config.train.template,
        "embeddings": settings.embeddings,
    }
    _say(
        "eval",
        f"base model {base_model}: held-out answers (greedy, {settings.max_new_tokens} new tokens), "
        "loss, verifiable instructions",
    )
    # Answers go to the shared answer cache ($PACOS_CACHE/eval, keyed by the weights' content): the same
    # base on the same held-out set is answered once per machine, not once per run directory (and the
    # judge reads the base's answers from there).
    evaluate_model(base_model, out / "base", **common)
    _say(
        "eval",
        "tuned model: the same"
        + (f", then judged against the base by {settings.judge}" if settings.judge else ""),
    )
    judging = None
    if settings.judge:
        judging = PairwiseSettings(
            judge=settings.judge,
            judge_model=settings.judge_model,
            baseline=base_model,
            baseline_template=config.train.template,
            max_answer_chars=settings.judge_max_chars,
        )
    tuned = evaluate_model(str(model_dir), out / "tuned", **common, judge=judging)
    keys = ("eos_rate", "rouge_l", "embedding_similarity", "ifeval")
    result = {"tuned": {k: tuned.get(k) for k in keys}, "judge": tuned.get("judge")}
    images = {}
    for name, directory in (("loss.png", model_dir), ("preference.png", prefer_dir)):
        if directory is not None and (directory / "loss.png").exists():
            images[name] = (directory / "loss.png").read_bytes()
    if prefer_dir is not None:
        _say("eval", "tuned + preference model: the same")
        preferred = evaluate_model(str(prefer_dir), out / "preferred", **common, judge=judging)
        result["preferred"] = {k: preferred.get(k) for k in keys}
        result["preferred_judge"] = preferred.get("judge")
    write_report(_eval_runs(config, out), out, images=images, notes=notes)
    return result


def _eval_runs(config: QuickstartConfig, eval_dir: Path) -> list[dict[str, Any]]:
    from pacos.evaluate.report import load_run

    runs = [load_run(eval_dir / "base", f"{config.train.model} (base)"),
            load_run(eval_dir / "tuned", "tuned (SFT)")]  # fmt: skip
    if (eval_dir / "preferred" / "metrics.json").exists():
        runs.append(load_run(eval_dir / "preferred", f"SFT + {config.prefer.objective.upper()}"))
    return runs


def print_table(runs: list[dict[str, Any]]) -> None:
    from pacos.evaluate.report import metric_rows

    rows = metric_rows(runs)
    width = max(len(row[0]) for row in rows)
    print(f"\n{'held-out tasks':<{width}}  " + "  ".join(f"{r['name']:>22}" for r in runs))
    for row in rows:
        print(f"{row[0]:<{width}}  " + "  ".join(f"{v:>22}" for v in row[1:]))


def _adapter_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())


def _ifeval_digest() -> str:
    from pacos.data.verifiable import PROMPTS_FILE

    return file_digest(PROMPTS_FILE)


def seed_files() -> list[Path]:
    return [p for name in ("seed-tasks-en", "seed-tasks-zh") for p in builtin_paths(name)]


def run_quickstart(config: QuickstartConfig, out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir, gen_dir, mix_dir, model_dir = (out_dir / n for n in ("data", "generate", "mix", "model"))
    results = {}
    results["data"] = run_stage(
        out_dir,
        "data",
        {
            "version": VERSION,
            "held_out": config.held_out.model_dump(),
            "seed": config.train.seed,
            "seeds": file_digest(*seed_files()),
        },
        lambda d: data_stage(config, d),
    )
    results["generate"] = run_stage(
        out_dir,
        "generate",
        {
            "version": VERSION,
            # `exclude` only when set: the setting came later, and runs made before it are not redone.
            "generate": config.generate.model_dump(
                mode="json", exclude=None if config.generate.exclude else {"exclude"}
            ),
            "seeds": file_digest(data_dir / "seeds-en.jsonl"),
        },
        lambda d: generate_stage(config, d, data_dir / "seeds-en.jsonl"),
    )
    results["mix"] = run_stage(
        out_dir,
        "mix",
        {
            "version": VERSION,
            "seed": config.train.seed,
            "generated": file_digest(gen_dir / "data.json"),
            "data": file_digest(data_dir / "seeds.jsonl", data_dir / "held_out.jsonl"),
            "contamination": {"ngram": NGRAM, "rouge": ROUGE, "ifeval": _ifeval_digest()},
        },
        lambda d: mix_stage(config, d, data_dir, gen_dir / "data.json"),
    )
    results["model"] = run_stage(
        out_dir,
        "model",
        {
            "version": VERSION,
            "train": config.train.model_dump(mode="json"),
            "data": file_digest(mix_dir / "train.jsonl", data_dir / "held_out.jsonl"),
        },
        lambda d: train_stage(config, d, mix_dir / "train.jsonl", data_dir / "held_out.jsonl"),
    )
    from pacos.infer.quantize import decoding_weights

    model_digest = file_digest(*_adapter_files(model_dir))
    prefer_dir = None
    if config.prefer.enabled:
        pairs_dir, prefer_dir = out_dir / "pairs", out_dir / "prefer"
        sampling = config.prefer.model_dump(  # the settings that change the pairs
            mode="json",
            exclude={"enabled", "objective", "preference", "lr", "epochs", "batch_size", "micro_batch_size"},
        )
        results["pairs"] = run_stage(
            out_dir,
            "pairs",
            {
                "version": VERSION,
                "prefer": sampling,
                "seed": config.train.seed,
                "model": model_digest,
                "template": config.train.template,
                "seeds": file_digest(data_dir / "seeds.jsonl"),
                "train_data": file_digest(mix_dir / "train.jsonl"),
                "weights": list(decoding_weights(config.eval.dtype, config.eval.quantize)),
            },
            lambda d: pairs_stage(config, d, data_dir / "seeds.jsonl", model_dir, mix_dir / "train.jsonl"),
        )
    if prefer_dir is not None and not (out_dir / "pairs" / "pairs.jsonl").exists():
        _say(
            "prefer",
            f"skipped: no prompt's answers differed by prefer.min_margin {config.prefer.min_margin} with a "
            "best answer that ended (raise prefer.k or prefer.max_new_tokens, lower prefer.min_margin)",
        )
        prefer_dir = None
    if prefer_dir is not None:
        results["prefer"] = run_stage(
            out_dir,
            "prefer",
            {
                "version": VERSION,
                "prefer": config.prefer.model_dump(mode="json"),
                "train": config.train.model_dump(mode="json"),
                "model": model_digest,
                "pairs": file_digest(pairs_dir / "pairs.jsonl"),
            },
            lambda d: prefer_stage(config, d, model_dir, pairs_dir / "pairs.jsonl"),
        )
    dropped = results["mix"].get("contaminated", 0)
    notes = (
        f"Training data: {dropped} records dropped for contamination (a {NGRAM}-gram, or ROUGE-L F1 > "
        f"{ROUGE:g}, shared with a held-out task or an ifeval prompt).",
    )
    results["eval"] = run_stage(
        out_dir,
        "eval",
        {
            "version": VERSION,
            "eval": config.eval.model_dump(mode="json"),
            "base": config.train.model,
            "template": config.train.template,
            "model": model_digest,
            "preferred": file_digest(*_adapter_files(prefer_dir)) if prefer_dir else None,
            "held_out": file_digest(data_dir / "held_out.jsonl"),
            "contaminated": results["mix"].get("contaminated"),  # stated in the report
        },
        lambda d: eval_stage(config, d, model_dir, data_dir / "held_out.jsonl", prefer_dir, notes),
    )
    print_table(_eval_runs(config, out_dir / "eval"))
    print(
        f"\n[done] report: {out_dir / 'eval' / 'report.html'}\n"
        f"       chat with the model: pacos chat --model {prefer_dir or model_dir}\n"
        f"       serve it (OpenAI API): pacos serve --model {prefer_dir or model_dir}\n"
        f"       export it for llama.cpp: pacos export {prefer_dir or model_dir} --format gguf "
        f"--out {out_dir / 'model.gguf'}\n"
        f"       evaluate it on your prompts: pacos eval --model {prefer_dir or model_dir} --prompts FILE "
        "--out runs/eval",
        flush=True,
    )
    return results
