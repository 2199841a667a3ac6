"""Which data makes the better model? Same base, same training budget, four ways to pick the data.

From one pool of generated records (e.g. `pacos generate --mode magpie`), build four training sets of
`--budget` records each and train Gemma 3 270M on each with the quickstart's training settings (same
steps, same seed), then evaluate all on the same held-out set with `pacos eval`'s metrics:

  random   a seeded random sample of the pool ("random1": another sample, to see how much samples differ);
  top      the records an LLM judge rated best (`pacos data score --judge`, `pacos data select --top`);
  diverse  the same, Deita-style: best first, skipping a record whose MiniLM cosine with one already
           chosen exceeds `--diverse` (`pacos data select --diverse`);
  evol     Evol-Instruct rewrites of the random sample (`pacos generate --mode evol`, the same teacher),
           with the sample's records whose evolutions failed filling the budget (WizardLM, too, trains on
           the evolved data and the data it grew from); "evol3" evolves for 3 rounds (failed items retried).

Every step is a stage that is skipped when its inputs did not change and resumed when it was killed, so
a rerun continues where the last one stopped. Progress goes to stderr; stdout is one JSON document (also
written to OUT/results.json), and OUT/results.md holds the table.

    .venv/bin/python benchmarks/data_ablation.py --pool runs/pool/data.json \
        --held-out runs/quickstart/data/held_out.jsonl --budget 100 --out runs/ablation
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ARMS = ("random", "top", "diverse", "evol")
PACOS = [sys.executable, "-m", "pacos"]


def log(message: str) -> None:
    print(f"[data_ablation] {message}", file=sys.stderr, flush=True)


def pacos(*args: str) -> None:
    """One pacos command; its own progress goes to stderr, a failure stops the benchmark."""
    log("pacos " + " ".join(args))
    done = subprocess.run([*PACOS, *args], stdout=sys.stderr)
    if done.returncode != 0:
        sys.exit(f"pacos {args[0]} {args[1] if len(args) > 1 else ''} failed (exit {done.returncode})")


def count_records(path: Path) -> int:
    from pacos.data.io import read_records

    return len(read_records(str(path), require_output=False))


def evol_rounds(arm: str, args: argparse.Namespace) -> int:
    """Arm "evol" evolves for --evol-rounds rounds, arm "evol3" for 3."""
    return int(arm[4:]) if arm[4:].isdigit() else args.evol_rounds


def build_arm(arm: str, args: argparse.Namespace, out: Path, stage_dir: Path) -> dict[str, Any]:
    from pacos.data.io import read_records, write_records

    data = stage_dir / "train.jsonl"
    if arm.startswith("random"):  # "random1": another sample (seed + 1), to see how much samples differ
        scored = read_records(str(out / "scored.jsonl"))  # the pool with its judge scores, in order
        seed = args.seed + (int(arm[6:]) if arm[6:].isdigit() else 0)
        write_records(random.Random(seed).sample(scored, args.budget), data)
    elif arm in ("top", "diverse"):
        extra = ["--diverse", str(args.diverse)] if arm == "diverse" else []
        judged = sum(_mean_judge([r]) is not None for r in read_records(str(out / "scored.jsonl")))
        fraction = f"{(args.budget + 0.25) / judged:.6f}"  # of the judged records (the rest are dropped)
        report = str(stage_dir / "select.json")
        pacos("data", "select", str(out / "scored.jsonl"), "--by", "judge", "--top", fraction,
              "--drop-unscored", *extra, "--out", str(data), "--report", report)  # fmt: skip
    else:  # evol or evolN (N rounds): the random arm's records are the starting set
        start = out / "arm-random" / "data" / "train.jsonl"
        rounds = str(evol_rounds(arm, args))
        pacos("generate", "--mode", "evol", "--teacher", args.teacher, "--seeds", str(start),
              "--rounds", rounds, "--num", str(args.budget), "--out", str(stage_dir / "run"),
              "--set", f"max_tokens={args.max_tokens}", "--set", "client.concurrency=16",
              "--set", f"max_requests={args.evol_max_requests}")  # fmt: skip
        accepted = stage_dir / "run" / "data.json"  # an empty list when no evolution passed
        evolved = json.loads(accepted.read_text(encoding="utf-8"))[: args.budget] if accepted.exists() else []
        # WizardLM trains on the evolved data and the data it grew from: the sample's records whose
        # evolutions failed fill the budget, so every arm trains on the same number of records.
        parents = {r["metadata"]["root_id"] for r in evolved}
        originals = [r for r in read_records(str(start)) if r.get("id") not in parents]
        write_records(evolved + originals[: args.budget - len(evolved)], stage_dir / "evolved.jsonl")
        # Rated by the same judge, so the table compares the data's judged quality across arms.
        pacos("data", "score", str(stage_dir / "evolved.jsonl"), "--judge", args.judge, "--signals", "len",
              "--concurrency", "16", "--out", str(data))  # fmt: skip
    records = read_records(str(data))
    evolved = sum(1 for r in records if (r.get("metadata") or {}).get("operation"))
    return {"records": len(records), "evolved": evolved, "mean_output_words": _mean_words(records, "output"),
            "mean_instruction_words": _mean_words(records, "instruction"),
            "mean_judge": _mean_judge(records)}  # fmt: skip


def _mean_words(records: list[dict[str, Any]], field: str) -> float:
    from pacos.text.cjk import count_words

    return round(sum(count_words(r.get(field) or "") for r in records) / max(1, len(records)), 1)


def _mean_judge(records: list[dict[str, Any]]) -> float | None:
    values = [
        r["scores"]["judge"] for r in records if isinstance(r.get("scores"), dict) and "judge" in r["scores"]
    ]
    return round(sum(values) / len(values), 3) if values else None


def train_arm(args: argparse.Namespace, data: Path, held_out: Path, out: Path) -> dict[str, Any]:
    from pacos.pipeline.quickstart_config import TRAIN
    from pacos.train.checkpoint import list_checkpoints
    from pacos.train.config import TrainConfig
    from pacos.train.run import train

    settings = {k: v for k, v in TRAIN.items() if k not in ("data", "clean", "val_fraction", "output_dir")}
    settings["model"] = args.model
    config = TrainConfig(**{**settings, "max_steps": args.steps, "tensorboard": False},
                         data=str(data), val_data=str(held_out), output_dir=str(out))  # fmt: skip
    result = train(config, resume=bool(list_checkpoints(out / "checkpoints")))
    return {"steps": result.steps, "final_loss": result.final_loss, "held_out_loss": result.best_val_loss,
            "seconds": round(result.seconds, 1), "examples": result.train_examples}  # fmt: skip


def evaluate_arm(args: argparse.Namespace, model: Path, held_out: Path, out: Path) -> dict[str, Any]:
    from pacos.evaluate.run import evaluate_model
    from pacos.llm.answers import Decoding

    metrics = evaluate_model(
        str(model), out, prompts=str(held_out), data=str(held_out), ifeval=True, ifeval_per_language=6,
        decoding=Decoding(max_new_tokens=args.max_new_tokens, dtype="bfloat16"), template="alpaca",
        embeddings=True, cache_path=out / "answers-cache.jsonl",
    )  # fmt: skip
    ifeval = metrics.get("ifeval") or {}
    return {
        "eos_rate": metrics.get("eos_rate"),
        "rouge_l": metrics.get("rouge_l"),
        "embedding_similarity": metrics.get("embedding_similarity"),
        "held_out_loss": (metrics.get("data_loss") or {}).get("loss"),
        "ifeval_strict": ifeval.get("prompt_strict"),
        "mean_answer_tokens": metrics.get("mean_new_tokens"),
        **{f"{key}_{lang}": (metrics.get("by_language") or {}).get(lang, {}).get(key)
           for lang in ("en", "zh") for key in ("eos_rate", "embedding_similarity")},
    }  # fmt: skip


def table(results: dict[str, Any]) -> str:
    def fmt(x: Any, pattern: str = "{:.3f}") -> str:
        return "-" if x is None else pattern.format(x)

    lines = [
        "| arm | records | judge mean of the data | EOS (en / zh) | embedding sim. (en / zh) | ROUGE-L "
        "| held-out loss | ifeval strict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm, row in results["arms"].items():
        data, ev = row["data"], row.get("eval") or {}
        same = f" (= {row['same_data_as']})" if row.get("same_data_as") else ""
        lines.append(
            f"| {arm}{same} | {data['records']} | {fmt(data['mean_judge'], '{:.2f}')} "
            f"| {fmt(ev.get('eos_rate'), '{:.1%}')} ({fmt(ev.get('eos_rate_en'), '{:.0%}')} / "
            f"{fmt(ev.get('eos_rate_zh'), '{:.0%}')}) | {fmt(ev.get('embedding_similarity'))} "
            f"({fmt(ev.get('embedding_similarity_en'))} / {fmt(ev.get('embedding_similarity_zh'))}) "
            f"| {fmt(ev.get('rouge_l'))} | {fmt(ev.get('held_out_loss'))} "
            f"| {fmt(ev.get('ifeval_strict'), '{:.1%}')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pool", required=True, help="generated records (data.json of pacos generate)")
    parser.add_argument("--held-out", required=True, help="records with reference outputs, never trained on")
    parser.add_argument("--model", default="gemma-3-270m", help="the base every arm trains from")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="evaluation answers")
    parser.add_argument("--budget", type=int, default=100, help="training records per arm")
    parser.add_argument("--steps", type=int, default=90, help="training steps per arm (batch 4)")
    parser.add_argument("--judge", default="local:smollm2-135m-instruct")
    parser.add_argument("--teacher", default="local:smollm2-135m-instruct", help="the evol arm's teacher")
    parser.add_argument("--diverse", type=float, default=0.8, help="the diverse arm's cosine bound")
    parser.add_argument("--evol-rounds", type=int, default=1)
    parser.add_argument("--evol-max-requests", type=int, default=600)
    parser.add_argument("--max-tokens", type=int, default=320, help="the evol teacher's answers")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/ablation")
    args = parser.parse_args()

    from pacos.data.io import read_records, write_records
    from pacos.pipeline.stages import file_digest, run_stage

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    held_out = out / "held_out.jsonl"
    write_records(read_records(args.held_out), held_out)
    pool_size = count_records(Path(args.pool))
    if pool_size <= args.budget:
        sys.exit(f"--budget {args.budget} must be smaller than the pool ({pool_size} records)")
    started = time.monotonic()
    scored = out / "scored.jsonl"
    if not scored.exists():  # pacos data score caches every judgment: a killed run resumes
        pacos("data", "score", args.pool, "--judge", args.judge, "--signals", "len", "--concurrency", "16",
              "--out", str(scored), "--report", str(out / "score.json"))  # fmt: skip

    results: dict[str, Any] = {
        "pool": args.pool,
        "pool_records": pool_size,
        "budget": args.budget,
        "steps": args.steps,
        "judge": args.judge,
        "teacher": args.teacher,
        "diverse": args.diverse,
        "seed": args.seed,
        "arms": {},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    inputs = {"pool": file_digest(Path(args.pool)), "scored": file_digest(scored), "budget": args.budget,
              "seed": args.seed, "held_out": file_digest(held_out)}  # fmt: skip
    trained_on: dict[str, str] = {}  # training data digest -> the arm that trained on it
    for arm in args.arms.split(","):
        arm_dir = out / f"arm-{arm}"
        settings = {
            **inputs,
            "arm": arm,
            "diverse": args.diverse if arm == "diverse" else None,
            "evol": [args.teacher, evol_rounds(arm, args), args.max_tokens]
            if arm.startswith("evol")
            else None,
        }
        data = run_stage(arm_dir, "data", settings, lambda d, arm=arm: build_arm(arm, args, out, d))
        log(f"{arm}: {data}")
        train_file = arm_dir / "data" / "train.jsonl"
        same = trained_on.get(file_digest(train_file))
        if same:  # training is deterministic for a seed: the same records make the same model
            log(f"{arm}: the same records as {same}; its model and numbers stand for both")
            results["arms"][arm] = {**results["arms"][same], "data": data, "same_data_as": same}
            continue
        trained_on[file_digest(train_file)] = arm
        model_dir = arm_dir / "model"
        trained = run_stage(
            arm_dir,
            "model",
            {
                "data": file_digest(train_file),
                "model": args.model,
                "steps": args.steps,
                "held_out": inputs["held_out"],
            },
            lambda d, f=train_file: train_arm(args, f, held_out, d),
        )
        evaluated = run_stage(
            arm_dir,
            "eval",
            {"model": file_digest(model_dir / "adapter_model.safetensors"), "held_out": inputs["held_out"]},
            lambda d, m=model_dir: evaluate_arm(args, m, held_out, d),
        )
        results["arms"][arm] = {"data": data, "train": trained, "eval": evaluated}
        log(f"{arm}: {evaluated}")
    results["seconds"] = round(time.monotonic() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (out / "results.md").write_text(table(results), encoding="utf-8")
    print(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
