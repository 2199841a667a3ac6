"""Preference training throughput and memory: pacos DPO vs TRL's DPOTrainer.

Same machine, same run, same model (Gemma 3 270M), same pairs, same effective batch (8 pairs: micro-batch 4 x
2 accumulation), same steps, beta and learning rate; LoRA and full fine-tuning. The pairs: every bundled
seed task (English and Chinese) with its reference answer as chosen and another task's answer as rejected,
rendered with the Alpaca template; as many pairs as the steps use, so each is seen once.

- trl: DPOTrainer in its best configuration on this machine: reference log-probs precomputed once
  (`precompute_ref_log_probs`, so no reference forward per step and, for full fine-tuning, no reference
  copy), padding-free batches, its fused LM-head log-probs; LoRA's reference is the adapter switched off.
- pacos: `pacos train --method dpo` with its defaults (reference log-probs computed once by the starting
  model, packed rows, chunked LM-head log-probs).
TRL checkpoints activations by default (`gradient_checkpointing=True`: less memory, one more forward per
step) and pacos does not: both are run both ways (`trl-nogc`, `pacos-gc`).

Each run is a fresh process; its time runs from before the model loads to the end of training (reference
log-probs included), and its peak RSS is its own. Prints one JSON document.

    .venv/bin/python benchmarks/bench_dpo.py [--steps 4] [--methods lora,full] [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "gemma-3-270m"
MAX_LENGTH = 512
MICRO_BATCH = 4
ACCUMULATION = 2
BETA = 0.1
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
LR = {"lora": 5e-5, "full": 5e-7}


def make_pairs(n: int) -> list[dict]:
    from pacos.data.io import read_records

    records = [r for r in read_records("seed-tasks") if len(r["output"]) < 1200]
    return [
        {"instruction": r["instruction"], "input": r.get("input", ""), "chosen": r["output"],
         "rejected": records[(i + 7) % len(records)]["output"]}
        for i, r in enumerate(records[:n])
    ]  # fmt: skip


def run_trl(
    method: str, steps: int, pairs: list[dict], out: str, bf16: bool, checkpointing: bool = True
) -> dict:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from pacos.data.templates import render_prompt
    from pacos.models import resolve_model

    path = resolve_model(MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    data = datasets.Dataset.from_list(
        [
            {"prompt": render_prompt(p, "alpaca"), "chosen": p["chosen"], "rejected": p["rejected"]}
            for p in pairs
        ]
    )
    args = DPOConfig(
        output_dir=out, per_device_train_batch_size=MICRO_BATCH, gradient_accumulation_steps=ACCUMULATION,
        max_steps=steps, learning_rate=LR[method], lr_scheduler_type="constant", logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, seed=42, disable_tqdm=True, bf16=bf16, beta=BETA,
        max_length=MAX_LENGTH, padding_free=True, precompute_ref_log_probs=True, dataloader_num_workers=0,
        gradient_checkpointing=checkpointing,
    )  # fmt: skip
    peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                         peft_config=peft if method == "lora" else None)  # fmt: skip
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"first_loss": logs[0]["loss"], "final_loss": logs[-1]["loss"]}


def run_pacos(
    method: str, steps: int, pairs: list[dict], out: str, bf16: bool, checkpointing: bool = False
) -> dict:
    from pacos.data.io import write_records
    from pacos.train.config import TrainConfig
    from pacos.train.metrics import read_metrics
    from pacos.train.run import train

    data = Path(out) / "pairs.jsonl"
    write_records(pairs, data)
    config = TrainConfig(
        model=MODEL, data=str(data), output_dir=str(Path(out) / "run"), objective="dpo", method=method,
        max_steps=steps, batch_size=MICRO_BATCH * ACCUMULATION, micro_batch_size=MICRO_BATCH,
        lr=LR[method], lr_scheduler="constant", warmup_ratio=0.0, max_length=MAX_LENGTH, lora=LORA,
        preference={"beta": BETA}, tensorboard=False, seed=42, precision="bf16-mixed" if bf16 else "fp32",
        gradient_checkpointing=checkpointing,
    )  # fmt: skip
    train(config)
    rows = [r for r in read_metrics(Path(out) / "run" / "metrics.jsonl") if "loss" in r]
    return {"first_loss": rows[0]["loss"], "final_loss": rows[-1]["loss"]}


# TRL's DPOConfig checkpoints activations by default (less memory, a recomputed forward); pacos does not.
RUNNERS = {
    "trl": run_trl,
    "trl-nogc": lambda *a: run_trl(*a, checkpointing=False),
    "pacos": run_pacos,
    "pacos-gc": lambda *a: run_pacos(*a, checkpointing=True),
}


def tokens_of(pairs: list[dict]) -> int:
    """Tokens of every answer with its prompt (and EOS), as both trainers see them."""
    from transformers import AutoTokenizer

    from pacos.data.templates import render_prompt
    from pacos.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(MODEL))
    total = 0
    for p in pairs:
        prompt = len(tok(render_prompt(p, "alpaca")).input_ids)
        total += sum(
            prompt + len(tok(p[k], add_special_tokens=False).input_ids) + 1 for k in ("chosen", "rejected")
        )
    return total


def child(trainer: str, method: str, steps: int, bf16: bool) -> None:
    pairs = make_pairs(steps * MICRO_BATCH * ACCUMULATION)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        stats = RUNNERS[trainer](method, steps, pairs, out, bf16)
        stats["seconds"] = round(time.perf_counter() - start, 1)
    stats["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("BENCH " + json.dumps(stats), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--trainers", default="trl,trl-nogc,pacos,pacos-gc")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--child", nargs=2, metavar=("TRAINER", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.steps, args.precision == "bf16")
        return
    import torch

    from pacos.models import resolve_model

    resolve_model(MODEL)  # convert the GGUF once, before any timed run
    pairs = make_pairs(args.steps * MICRO_BATCH * ACCUMULATION)
    tokens = tokens_of(pairs)
    results: dict = {"model": MODEL, "precision": args.precision, "steps": args.steps,
                     "pairs_per_step": MICRO_BATCH * ACCUMULATION, "pairs": len(pairs), "tokens": tokens,
                     "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "cpu_count": os.cpu_count(), "runs": {}}  # fmt: skip
    for method in args.methods.split(","):
        for trainer in args.trainers.split(","):
            command = [sys.executable, __file__, "--steps", str(args.steps), "--precision", args.precision,
                       "--child", trainer, method]  # fmt: skip
            proc = subprocess.run(command, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
            if proc.returncode != 0 or line is None:
                results["runs"][f"{trainer}/{method}"] = {"error": proc.stderr.strip().splitlines()[-3:]}
                continue
            stats = json.loads(line[6:])
            stats["tokens_per_second"] = round(tokens / stats["seconds"], 1)
            results["runs"][f"{trainer}/{method}"] = stats
            print(f"{trainer}/{method}: {stats}", file=sys.stderr, flush=True)
    for method in args.methods.split(","):
        for ours_name in ("pacos", "pacos-gc"):
            for theirs_name in ("trl", "trl-nogc"):
                ours = results["runs"].get(f"{ours_name}/{method}", {})
                theirs = results["runs"].get(f"{theirs_name}/{method}", {})
                if "seconds" in ours and "seconds" in theirs:
                    results[f"{method}: {ours_name} vs {theirs_name}"] = {
                        "speed": round(theirs["seconds"] / ours["seconds"], 2),
                        "memory": round(ours["peak_rss_mb"] / theirs["peak_rss_mb"], 2),
                    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
