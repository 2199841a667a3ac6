"""Fine-tuning throughput and memory: pacos vs the original Alpaca approach vs TRL's SFTTrainer.

Same machine, same run, same model (Gemma 3 270M), same data (the bundled seed tasks: real instruction
records of varied length, English and Chinese), same effective batch (8 examples: micro-batch 4 x 2
accumulation), same number of steps, same learning rate; LoRA and full fine-tuning.

- original: what stanford_alpaca's train.py does, on the HF Trainer: prompt+output+EOS tokenized together,
  prompt labels -100, random batches padded to their longest member, full logits and loss in the model.
- trl: TRL's SFTTrainer in its best configuration available on this machine: prompt-completion data
  (completion-only loss), packing with the best-fit-decreasing strategy (padding-free batches), and its
  own fused LM-head loss (Liger kernels need Triton, i.e. a GPU).
- pacos: `pacos.train.run.train` with its defaults (padding-free packing, fused response-only loss).

Each run is a fresh process, so peak RSS is that run's own. Prints one JSON document.

    .venv/bin/python benchmarks/bench_train.py [--steps 5] [--precision fp32|bf16] [--methods lora,full]
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
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
LR = {"lora": 2e-4, "full": 2e-5}


def _records() -> list[dict]:
    from pacos.data.io import read_records

    return read_records("seed-tasks")


def _peft_config():
    from peft import LoraConfig

    return LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


class _CountingCollator:
    """Wraps a collator to count real and padded tokens of every batch the trainer sees."""

    def __init__(self, inner):
        self.inner, self.real, self.padded = inner, 0, 0

    def __call__(self, features):
        batch = self.inner(features)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        self.real += int(mask.sum()) if mask is not None else ids.numel()
        self.padded += ids.numel()
        return batch


def _trainer_args(method: str, steps: int, out: str, bf16: bool) -> dict:
    """The settings the HF Trainer and TRL's SFTTrainer share in this benchmark."""
    return {"output_dir": out, "per_device_train_batch_size": MICRO_BATCH,
            "gradient_accumulation_steps": ACCUMULATION, "max_steps": steps, "learning_rate": LR[method],
            "lr_scheduler_type": "cosine", "warmup_steps": 0.03, "weight_decay": 0.0, "logging_steps": 1,
            "save_strategy": "no", "report_to": [], "use_cpu": True, "seed": 42, "disable_tqdm": True,
            "bf16": bf16}  # fmt: skip


def _train_and_report(trainer, collator: _CountingCollator) -> dict:
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": result.metrics["train_runtime"], "real_tokens": collator.real,
            "padded_tokens": collator.padded, "final_loss": losses[-1]}  # fmt: skip


def run_original(method: str, steps: int, out: str, bf16: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from pacos.data.templates import render_prompt
    from pacos.models import resolve_model

    path = resolve_model(MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if method == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, _peft_config())
    features = []
    for r in _records():  # stanford_alpaca's preprocess(): tokenize source+target together, mask the source
        source = render_prompt(r, "alpaca")
        full = tok(source + r["output"] + tok.eos_token, truncation=True, max_length=MAX_LENGTH).input_ids
        n_source = len(tok(source, truncation=True, max_length=MAX_LENGTH).input_ids)
        labels = [-100] * n_source + full[n_source:]
        features.append({"input_ids": full, "labels": labels[: len(full)]})

    def collate(batch):  # stanford_alpaca's DataCollatorForSupervisedDataset
        ids = torch.nn.utils.rnn.pad_sequence(
            [torch.tensor(f["input_ids"]) for f in batch], batch_first=True, padding_value=tok.pad_token_id
        )
        labels = torch.nn.utils.rnn.pad_sequence(
            [torch.tensor(f["labels"]) for f in batch], batch_first=True, padding_value=-100
        )
        return {"input_ids": ids, "labels": labels, "attention_mask": ids.ne(tok.pad_token_id)}

    collator = _CountingCollator(collate)
    args = TrainingArguments(**_trainer_args(method, steps, out, bf16), remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=features, data_collator=collator)
    return _train_and_report(trainer, collator)


def run_trl(method: str, steps: int, out: str, bf16: bool) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from pacos.data.templates import render_prompt
    from pacos.models import resolve_model

    path = resolve_model(MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    data = datasets.Dataset.from_list(
        [{"prompt": render_prompt(r, "alpaca"), "completion": r["output"]} for r in _records()]
    )
    args = SFTConfig(
        **_trainer_args(method, steps, out, bf16),
        max_length=MAX_LENGTH,
        packing=True,
        packing_strategy="bfd",
        completion_only_loss=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tok,
        peft_config=_peft_config() if method == "lora" else None,
    )
    trainer.data_collator = _CountingCollator(trainer.data_collator)
    return _train_and_report(trainer, trainer.data_collator)


def run_pacos(method: str, steps: int, out: str, bf16: bool) -> dict:
    from pacos.train.config import TrainConfig
    from pacos.train.metrics import read_metrics
    from pacos.train.run import train

    config = TrainConfig(
        model=MODEL,
        data="seed-tasks",
        output_dir=out,
        method=method,
        max_steps=steps,
        batch_size=MICRO_BATCH * ACCUMULATION,
        micro_batch_size=MICRO_BATCH,
        lr=LR[method],
        max_length=MAX_LENGTH,
        lora=LORA,
        tensorboard=False,
        seed=42,
        precision="bf16-mixed" if bf16 else "fp32",
    )
    result = train(config)
    last = read_metrics(Path(out) / "metrics.jsonl")[-1]
    seconds = result.real_tokens / last["tokens_per_second"]  # the training loop, not the final save
    return {
        "seconds": seconds,
        "real_tokens": result.real_tokens,
        "padded_tokens": round(result.real_tokens / result.padding_efficiency),
        "final_loss": result.final_loss,
    }


RUNNERS = {"original": run_original, "trl": run_trl, "pacos": run_pacos}


def child(trainer: str, method: str, steps: int, bf16: bool) -> None:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        stats = RUNNERS[trainer](method, steps, out, bf16)
    stats["wall_seconds_with_load"] = round(time.perf_counter() - start, 1)
    stats["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("BENCH " + json.dumps(stats), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--trainers", default="original,trl,pacos")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="for every trainer alike: bf16 autocast (CPUs with AMX/AVX512-BF16 run it natively)",
    )
    parser.add_argument("--child", nargs=2, metavar=("TRAINER", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.steps, args.precision == "bf16")
        return
    import torch

    from pacos.models import resolve_model

    resolve_model(MODEL)  # convert the GGUF once, before any timed run
    results: dict = {
        "model": MODEL,
        "precision": args.precision,
        "steps": args.steps,
        "examples_per_step": MICRO_BATCH * ACCUMULATION,
        "max_length": MAX_LENGTH,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "runs": {},
    }
    for method in args.methods.split(","):
        for trainer in args.trainers.split(","):
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--steps",
                    str(args.steps),
                    "--precision",
                    args.precision,
                    "--child",
                    trainer,
                    method,
                ],
                capture_output=True,
                text=True,
            )
            line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
            if proc.returncode != 0 or line is None:
                results["runs"][f"{trainer}/{method}"] = {"error": proc.stderr.strip().splitlines()[-1:]}
                continue
            stats = json.loads(line[6:])
            stats["non_pad_tokens_per_second"] = round(stats["real_tokens"] / stats["seconds"], 1)
            stats["padding_efficiency"] = round(stats["real_tokens"] / stats["padded_tokens"], 4)
            results["runs"][f"{trainer}/{method}"] = stats
            print(f"{trainer}/{method}: {stats}", file=sys.stderr, flush=True)
    runs = results["runs"]
    for method in args.methods.split(","):
        mine = runs.get(f"pacos/{method}", {})
        for peer in ("original", "trl"):
            theirs = runs.get(f"{peer}/{method}", {})
            if "non_pad_tokens_per_second" in mine and "non_pad_tokens_per_second" in theirs:
                results.setdefault("pacos_vs", {})[f"{peer}/{method}"] = {
                    "speedup": round(
                        mine["non_pad_tokens_per_second"] / theirs["non_pad_tokens_per_second"], 2
                    ),
                    "peak_rss_ratio": round(mine["peak_rss_mb"] / theirs["peak_rss_mb"], 2),
                }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
