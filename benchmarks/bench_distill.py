"""Prune SmolLM2-135M-Instruct by 20% of its layers, heal it by distillation, and measure what it costs.

1. `pacos compress`: drop 6 of its 30 decoder layers by block influence (calibration: the first half of
   the seed tasks); held-out text: the second half, never trained on.
2. Heal with `pacos distill` (recipes/heal-pruned.yaml: forward KL, full fine-tuning, training data the
   first half) with the same steps in three modes: the live teacher each step, the cached top-64
   teacher, and on-policy (GKD, lambda 0.5: on half the steps the student answers the prompts itself).
   Reported per mode: wall time (the cache fill included), training tokens/s, and on the held-out text
   the perplexity, next-token agreement with the unpruned model and KL(unpruned || model) per token;
   and on the model's own greedy answers to the held-out prompts (what a user sees, and what on-policy
   training targets) the KL(unpruned || model) per answer token, how often the unpruned model would have
   written the same token, and how many answers end with EOS.
3. Decoding speed in the pacos engine (fp32, batch 1, greedy, 128 new tokens, EOS ignored), unpruned vs
   pruned, median of 3 timed runs after a warm-up.

Progress goes to stderr; stdout is one JSON document.

    .venv/bin/python benchmarks/bench_distill.py [--steps 150] [--out-dir /tmp/pacos-bench-distill]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

MODEL = "smollm2-135m-instruct"
DROP = 6
PROMPTS = [
    "Give three tips for staying healthy.",
    "Explain what a binary search does.",
    "用一句话解释什么是光合作用。",
    "Write a haiku about the sea.",
]


def log(message: str) -> None:
    print(f"[bench_distill] {message}", file=sys.stderr, flush=True)


def decode_speed(spec: str, new_tokens: int = 128) -> float:
    from pacos.infer import SamplingParams, TorchEngine

    engine = TorchEngine.load(spec, dtype="float32")
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    engine.generate([PROMPTS[0]], params)  # warm-up
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for prompt in PROMPTS:
            engine.generate([prompt], params)
        rates.append(len(PROMPTS) * new_tokens / (time.perf_counter() - start))
    return round(statistics.median(rates), 1)


def on_own_answers(reference: Any, model: Any, tokenizer: Any, records: list[dict], new_tokens: int = 96):
    """The model's greedy answers to the records' prompts, scored token by token by the reference."""
    from pacos.train.data import IGNORE, tokenize_records
    from pacos.train.divergences import divergence_sum
    from pacos.train.on_policy import student_examples

    examples = tokenize_records(records, tokenizer, "alpaca", 512, "drop")[0]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    kl = agree = tokens = ended = 0.0
    for i in range(0, len(examples), 16):
        for answer in student_examples(model, examples[i : i + 16], eos, pad, new_tokens, 512, 0.0, 0):
            x = torch.tensor([answer.input_ids])
            labelled = torch.tensor(answer.targets) != IGNORE
            with torch.no_grad():
                want = reference(input_ids=x, use_cache=False).logits[0][labelled].float()
                logits = model(input_ids=x, use_cache=False).logits[0][labelled].float()
            kl += float(divergence_sum(logits, want, "forward_kl"))
            agree += float((want.argmax(-1) == torch.tensor(answer.targets)[labelled]).sum())
            tokens += int(labelled.sum())
            ended += answer.input_ids[-1] == eos
    return {
        "own_answers_kl_from_reference": round(kl / tokens, 4),
        "own_answers_reference_agreement": round(agree / tokens, 4),
        "own_answers_ending_in_eos": round(ended / len(examples), 4),
        "own_answers_tokens": int(tokens),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/pacos-bench-distill"))
    parser.add_argument("--modes", default="live,cached_top64,on_policy", help="healing modes to run")
    parser.add_argument("--prompts", type=int, default=48, help="held-out prompts for the own-answer metrics")
    args = parser.parse_args()
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)

    import yaml

    from pacos.compress.prune import compare, prune, text_ids
    from pacos.data.io import read_records
    from pacos.models import load_model, load_tokenizer
    from pacos.train.config import TrainConfig
    from pacos.train.run import train

    report: dict[str, Any] = {"model": MODEL, "drop": DROP, "steps": args.steps}
    with contextlib.redirect_stdout(sys.stderr):
        start = time.perf_counter()
        pruned = prune(MODEL, out / "pruned", DROP)
        report["prune"] = {
            "seconds": round(time.perf_counter() - start, 1),
            "dropped": pruned.dropped,
            "parameters": [pruned.parameters_before, pruned.parameters_after],
            **pruned.evaluation,
        }
        log(f"pruned: {json.dumps(report['prune'])}")

        records = read_records("seed-tasks")
        half = len(records) // 2  # as prune(): train on the first half, measure on the second
        train_file = out / "train.jsonl"
        train_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[:half]))
        tokenizer = load_tokenizer(MODEL)
        held_out = text_ids(tokenizer, records[half:], "alpaca", 4096, 512)
        reference = load_model(MODEL, dtype=torch.float32).eval()
        prompts = records[half:][: args.prompts]
        report["prune"]["unpruned"].update(on_own_answers(reference, reference, tokenizer, prompts))
        report["prune"]["pruned"].update(
            on_own_answers(
                reference, load_model(str(out / "pruned"), dtype=torch.float32).eval(), tokenizer, prompts
            )
        )
        log(f"pruned on its own answers: {json.dumps(report['prune']['pruned'])}")

        recipe = yaml.safe_load(Path("recipes/heal-pruned.yaml").read_text())
        modes = {"live": (None, 0.0), "cached_top64": (64, 0.0), "on_policy": (None, 0.5)}
        chosen = args.modes.split(",")
        for mode in chosen:
            top_k, on_policy = modes[mode]
            recipe.update(model=str(out / "pruned"), data=str(train_file), max_steps=args.steps)
            recipe["output_dir"] = str(out / f"healed-{mode}")
            recipe["distill"] = {
                **recipe["distill"],
                "teacher": MODEL,
                "top_k": top_k,
                "on_policy": on_policy,
            }
            recipe["tensorboard"] = False
            start = time.perf_counter()
            result = train(TrainConfig(**recipe))
            wall = time.perf_counter() - start
            healed = load_model(result.output_dir, dtype=torch.float32).eval()
            report[mode] = {
                "wall_seconds": round(wall, 1),
                "train_tokens_per_second": round(result.tokens_per_second, 1),
                "final_train_loss": round(result.final_loss, 4),
                **compare(reference, healed, held_out),
                **on_own_answers(reference, healed, tokenizer, prompts),
            }
            log(f"{mode}: {json.dumps(report[mode])}")

        unpruned = report["prune"]["unpruned"]
        before = report["prune"]["pruned"]
        for mode in chosen:
            after = report[mode]
            lost = unpruned["next_token_agreement"] - before["next_token_agreement"]
            report[mode]["recovered_share_of_lost_agreement"] = round(
                (after["next_token_agreement"] - before["next_token_agreement"]) / lost, 3
            )
            report[mode]["recovered_share_of_perplexity_gap"] = round(
                (before["perplexity"] - after["perplexity"])
                / (before["perplexity"] - unpruned["perplexity"]),
                3,
            )
        report["decode_tokens_per_second"] = {
            "unpruned": decode_speed(MODEL),
            "pruned": decode_speed(str(out / "pruned")),
        }
    report["environment"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
